use super::*;

fn budget(cap: usize) -> Arc<PipeBudget> {
    let b = PipeBudget::new(1 << 20, 64 << 10);
    b.cap.store(cap, Ordering::Relaxed);
    Arc::new(b)
}

#[test]
fn pipes_are_at_least_the_size_asked() {
    let p = Pipe::new(64 << 10).unwrap();
    assert!(p.capacity >= 64 << 10);
    let p = Pipe::new(128 << 10).unwrap();
    assert!(p.capacity >= 128 << 10);
}

#[test]
fn pool_reuses_and_caps() {
    let b = budget(100);
    let mut pool = PipePool::new(64 << 10, 1, Arc::clone(&b));
    let a = pool.get(Instant::now).unwrap();
    let c = pool.get(Instant::now).unwrap();
    assert_eq!(pool.counts().created, 2);
    assert_eq!(pool.counts().in_use, 2);
    pool.put(a);
    pool.put(c);
    assert_eq!(pool.counts().pooled, 1, "only max_pooled pipes are kept");
    assert_eq!(b.held(), 1, "the other went back to the budget");
    let _d = pool.get(Instant::now).unwrap();
    assert_eq!(pool.counts().created, 2, "the pooled pipe was reused");
    assert_eq!(pool.counts().lent, 3, "every loan counts, pooled or new");
    assert_eq!(pool.counts().in_use, 1);
}

#[test]
fn the_budget_is_shared_and_bounds_every_pool() {
    let b = budget(2);
    let mut one = PipePool::new(64 << 10, 4, Arc::clone(&b));
    let mut two = PipePool::new(64 << 10, 4, Arc::clone(&b));
    let p1 = one.get(Instant::now).unwrap();
    let p2 = two.get(Instant::now).unwrap();
    assert!(one.get(Instant::now).is_none() && two.get(Instant::now).is_none(), "the cap holds across workers");
    assert_eq!(one.counts().refused + two.counts().refused, 2);
    one.discard(p1);
    assert!(two.get(Instant::now).is_some(), "a pipe given back can be had again");
    two.put(p2);
    drop(two);
    drop(one);
    assert_eq!(b.held(), 1, "dropped pools give their spare pipes back");
}

#[test]
fn an_impossible_size_is_refused_and_counted() {
    let b = budget(10);
    let mut pool = PipePool::new(1 << 30, 4, Arc::clone(&b));
    assert!(pool.get(Instant::now).is_none());
    assert_eq!(pool.counts().refused, 1);
    assert_eq!(b.held(), 0, "a failed pipe2 does not spend the budget");
}

thread_local! {
    /// What `flaky` does on this test's thread: (fail, calls so far).
    static FLAKY: std::cell::Cell<(bool, u32)> = const { std::cell::Cell::new((false, 0)) };
}

/// `Pipe::new`, counted, failing like a process at its fd limit while told to.
fn flaky(size: usize) -> io::Result<Pipe> {
    let (fail, calls) = FLAKY.get();
    FLAKY.set((fail, calls + 1));
    if fail { Err(io::Error::from_raw_os_error(24)) } else { Pipe::new(size) }
}

fn set_failing(fail: bool) {
    FLAKY.set((fail, FLAKY.get().1));
}

fn pipe2_calls() -> u32 {
    FLAKY.get().1
}

#[test]
fn a_refused_pipe_cools_down_by_time_even_when_every_lent_pipe_is_discarded() {
    for max_pooled in [0, 4] {
        let b = budget(10);
        let mut pool = PipePool::new(64 << 10, max_pooled, Arc::clone(&b));
        pool.make = flaky;
        let t0 = Instant::now();
        let lent: Vec<Pipe> = (0..3).map(|_| pool.get(|| t0).expect("a pipe")).collect();
        set_failing(true);
        let calls = pipe2_calls();
        assert!(pool.get(|| t0).is_none(), "the kernel refuses");
        assert_eq!(pipe2_calls(), calls + 1);
        // Every lent pipe comes back with bytes in it: nothing is pooled.
        for p in lent {
            pool.discard(p);
        }
        set_failing(false);
        for ms in [0, 10, 999] {
            let t = t0 + Duration::from_millis(ms);
            assert!(pool.get(|| t).is_none(), "max_pooled {max_pooled}: still cooling down at {ms} ms");
        }
        assert_eq!(pipe2_calls(), calls + 1, "max_pooled {max_pooled}: no pipe2 during the cool-down");
        assert_eq!(pool.counts().refused, 4);
        let later = t0 + COOL_DOWN;
        let p = pool.get(|| later).expect("after the cool-down the pool asks again");
        assert_eq!(pipe2_calls(), calls + 2);
        pool.put(p);
        assert_eq!(b.held(), usize::from(max_pooled > 0));
    }
}

#[test]
fn the_clock_is_read_only_when_the_answer_depends_on_it() {
    let b = budget(10);
    let mut pool = PipePool::new(64 << 10, 4, Arc::clone(&b));
    pool.make = flaky;
    let no_clock = || -> Instant { panic!("the clock was read on the common path") };
    let p = pool.get(no_clock).expect("a new pipe");
    pool.put(p);
    let p = pool.get(no_clock).expect("the pooled pipe");
    set_failing(true);
    let t0 = Instant::now();
    assert!(pool.get(|| t0).is_none());
    pool.put(p);
    assert!(pool.get(no_clock).is_some(), "a pooled pipe is lent even during a cool-down");
}

#[test]
fn growing_doubles_within_the_page_budget_and_gives_the_pages_back() {
    let b = budget(10);
    b.page_cap.store(16 + 32 + 16, Ordering::Relaxed); // room for one 64 KiB pipe grown once, and one more
    let mut pool = PipePool::new(64 << 10, 4, Arc::clone(&b));
    let mut p = pool.get(Instant::now).unwrap();
    assert_eq!(b.held_bytes() / PAGE, 16);
    assert!(pool.grow(&mut p), "16 -> 32 pages fits");
    assert_eq!((p.capacity, b.held_bytes() / PAGE), (128 << 10, 32));
    let other = pool.get(Instant::now).unwrap();
    assert!(!pool.grow(&mut p), "64 pages would pass the cap");
    assert_eq!((p.capacity, b.held_bytes() / PAGE), (128 << 10, 48), "a refused growth charges nothing");
    assert_eq!(pool.counts().grown, 1);
    pool.put(p);
    pool.discard(other);
    assert_eq!(b.held_bytes() / PAGE, 32, "the grown pipe is pooled, grown");
    let again = pool.get(Instant::now).unwrap();
    assert_eq!(again.capacity, 128 << 10);
    pool.discard(again);
    assert_eq!((b.held(), b.held_bytes() / PAGE), (0, 0));
}

#[test]
fn a_pipe_never_grows_past_the_pools_limit() {
    let b = budget(10);
    let mut pool = PipePool::new(64 << 10, 4, Arc::clone(&b));
    pool.grow_limit = 128 << 10;
    let mut p = pool.get(Instant::now).unwrap();
    assert!(pool.grow(&mut p));
    assert!(!pool.grow(&mut p), "at the limit");
    assert_eq!(p.capacity, 128 << 10);
    pool.put(p);
}

#[test]
fn resizing_closes_spare_pipes_of_the_old_size() {
    let b = budget(10);
    let mut pool = PipePool::new(64 << 10, 4, Arc::clone(&b));
    let lent = pool.get(Instant::now).unwrap();
    let spare = pool.get(Instant::now).unwrap();
    pool.put(spare);
    pool.resize(128 << 10, 4);
    assert_eq!(pool.counts().pooled, 0);
    pool.put(lent);
    assert_eq!(pool.counts().pooled, 0, "a returned pipe of the old size is closed");
    assert_eq!(b.held(), 0);
}
