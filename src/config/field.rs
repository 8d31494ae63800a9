//! Where in the file a rule was broken: a field path (`routes[1].listen`)
//! and the error that carries it, made by the cross-field checks
//! (`validate.rs`, `shared.rs`) and placed at a line and column by `load.rs`.

use std::fmt;

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    /// A mapping key.
    Key(&'static str),
    /// A sequence index.
    Index(usize),
}

/// A field path such as `routes[1].listen`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    pub(super) fn route(i: usize) -> Self {
        FieldPath(vec![Seg::Key("routes"), Seg::Index(i)])
    }

    pub(super) fn key(mut self, k: &'static str) -> Self {
        self.0.push(Seg::Key(k));
        self
    }

    pub(super) fn index(mut self, i: usize) -> Self {
        self.0.push(Seg::Index(i));
        self
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if n == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// A rule that a valid value of one field broke in the context of the others.
#[derive(Debug)]
pub struct FieldError {
    /// Which field.
    pub path: FieldPath,
    /// The path as text (`routes[1].listen`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}
