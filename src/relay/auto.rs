//! `relay: auto`'s view of one direction: how big its messages are, which
//! is the size class whose measured costs (`cost.rs`) pick its stage.
//!
//! A message is what a direction reads while the other sends nothing; its
//! size is known once the other direction moves. The class of a flow is
//! that of its last message, or of the one under way once it is bigger: a
//! one-way stream climbs class by class to the last, and a flow of 64 KiB
//! requests stays in the 64 KiB class whatever its replies are.
//!
//! Each run of the pump asks the worker's [`Costs`] for a stage; a pump
//! whose stage holds bytes takes the new stage only once they are
//! delivered (it stops filling until then), so no byte is ever left behind
//! in a buffer or a pipe, and no flow can stay in a stage just because its
//! buffer is never empty. Each stretch of a run in one stage is timed and
//! charged to that stage with the bytes it delivered.

use super::cost::{Costs, Way, class_of};

/// A direction under `relay: auto`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Auto {
    /// Read since the other direction last moved.
    one_way: u64,
    /// The size of the last whole message (0: none yet).
    last_message: u64,
    /// The stage this run chose, to be taken once the current one is empty.
    next: Option<Way>,
    /// This run only measures the stage it chose (see [`Auto::exploring`]).
    exploring: bool,
}

impl Auto {
    /// Counts a read of `n` bytes.
    pub fn read(&mut self, n: usize) {
        self.one_way += n as u64;
    }

    /// The other direction moved bytes: the message this one was reading
    /// (if any) is whole.
    pub fn other_way_moved(&mut self) {
        if self.one_way > 0 {
            self.last_message = self.one_way;
            self.one_way = 0;
        }
    }

    /// The flow's size class (see the module's header).
    pub fn class(&self) -> usize {
        class_of(self.one_way.max(self.last_message))
    }

    /// A run starts in stage `current` with `delivered` bytes delivered so
    /// far: asks for this run's stage and starts timing.
    pub fn start_run(&mut self, costs: &mut Costs, current: Way, delivered: u64) {
        let (way, exploring) = costs.choose(self.class());
        self.next = (way != current).then_some(way);
        self.exploring = exploring;
        costs.start(self.class(), current, delivered);
    }

    /// This run tries a stage to measure it, not because it measured
    /// cheaper: the pump gives it one round only, so a sample costs little.
    pub fn exploring(&self) -> bool {
        self.exploring
    }

    /// The stage to change to once the current one is empty, if any.
    pub fn wanted(&self) -> Option<Way> {
        self.next
    }

    /// The pump changed to stage `way`: the stretch before is charged to
    /// the old stage, and a new one starts.
    pub fn switched(&mut self, costs: &mut Costs, way: Way, delivered: u64) {
        costs.finish(delivered);
        self.next = None;
        costs.start(self.class(), way, delivered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_class_is_the_last_message_or_the_one_under_way_once_bigger() {
        let mut a = Auto::default();
        assert_eq!(a.class(), 0, "nothing read yet: the smallest class");
        a.read(64 << 10);
        assert_eq!(a.class(), class_of(64 << 10));
        a.other_way_moved();
        assert_eq!(a.class(), class_of(64 << 10), "a reply keeps the message size");
        a.read(1024);
        assert_eq!(a.class(), class_of(64 << 10), "a smaller message under way");
        a.other_way_moved();
        assert_eq!(a.class(), 0, "the smaller message is now the last");
        a.other_way_moved();
        assert_eq!(a.class(), 0, "a reply without a request changes nothing");
    }

    #[test]
    fn a_one_way_stream_climbs_to_the_last_class() {
        let mut a = Auto::default();
        let mut classes = Vec::new();
        for _ in 0..1024 {
            a.read(64 << 10);
            classes.push(a.class());
        }
        assert!(classes.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*classes.last().unwrap(), super::super::cost::CLASSES - 1);
    }
}
