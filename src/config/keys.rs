//! Every key the loader accepts, read from the `Deserialize` impls of the
//! raw config rather than listed by hand, so the documentation tests
//! (`tests/repo/docs_drift.rs`) notice a key added to `schema.rs` and left out of
//! `docs/configuration.md`.
//!
//! A small tracing `Deserializer` replays `RawConfig::deserialize` once per
//! key path. Along the path it answers each struct with a one-entry map
//! (the next key, and a tracer for its value), each `Option` with `Some`,
//! each sequence with one element. At the end of the path it records the
//! shape it was asked for: a derived struct names its fields in
//! `deserialize_struct`; a hand-written impl that goes through
//! `deserialize_any` (`Toggle`, `Keepalive`, `RawUpstream`) gets a map with
//! one probe key that is no field, and its `deny_unknown_fields` struct
//! reports the fields it expected through `de::Error::unknown_field`, which
//! our error type captures. Any other error means a leaf value. The file's
//! schema and its validation are left to `schema.rs` and `validate.rs`.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::schema::RawConfig;

/// Path segment of a sequence element: `routes[].name`.
const ELEMENT: &str = "[]";
/// Path segment of a map entry whose key the user chooses.
const ENTRY: &str = "*";
/// A key no struct has: its `unknown_field` error lists the ones it has.
const PROBE: &str = "\u{0}sluice-key-probe";
/// Deeper paths are not followed (the schema is 4 levels deep today).
const MAX_DEPTH: usize = 12;

/// Every key path the config file accepts, sorted: `workers`, `admin.listen`,
/// `routes[].upstreams[].weight`. Sections (`admin`, `routes[].socket`) are
/// keys too. Keys under `defaults:` are reported as `defaults.X`; each is
/// also a route key `routes[].X`.
pub fn accepted_keys() -> Vec<String> {
    let mut out = Vec::new();
    walk(&mut Vec::new(), &mut out);
    out.sort();
    out.dedup();
    out
}

/// Records the keys below `path` into `out`.
fn walk(path: &mut Vec<&'static str>, out: &mut Vec<String>) {
    if path.len() >= MAX_DEPTH {
        return;
    }
    match shape_at(path) {
        Shape::Struct(fields) => {
            for &field in fields {
                path.push(field);
                out.push(name(path));
                walk(path, out);
                path.pop();
            }
        }
        Shape::Seq => {
            path.push(ELEMENT);
            walk(path, out);
            path.pop();
        }
        Shape::Map => {
            path.push(ENTRY);
            out.push(name(path));
            walk(path, out);
            path.pop();
        }
        Shape::Leaf => {}
    }
}

/// `["routes", "[]", "upstreams", "[]", "weight"]` → `routes[].upstreams[].weight`.
fn name(path: &[&str]) -> String {
    let mut s = String::new();
    for seg in path {
        if *seg != ELEMENT && !s.is_empty() {
            s.push('.');
        }
        s.push_str(seg);
    }
    s
}

/// What the value at `path` is, found by replaying the root deserialize.
fn shape_at(path: &[&'static str]) -> Shape {
    match RawConfig::deserialize(Tracer { rest: path }) {
        Err(TraceError::Found(shape)) => shape,
        // Missing fields, leaf types refusing a map: nothing with keys below.
        Err(TraceError::Other(_)) | Ok(_) => Shape::Leaf,
    }
}

/// The shape of the value at the end of a traced path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A struct with these fields.
    Struct(&'static [&'static str]),
    /// A sequence.
    Seq,
    /// A map with keys of the user's choosing.
    Map,
    /// A single value.
    Leaf,
}

/// Errors of the replay; `Found` ends it with what was recorded.
#[derive(Debug)]
enum TraceError {
    Found(Shape),
    Other(String),
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::Found(shape) => write!(f, "traced {shape:?}"),
            TraceError::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for TraceError {}

impl de::Error for TraceError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        TraceError::Other(msg.to_string())
    }

    // The probe key reached a `deny_unknown_fields` struct behind `deserialize_any`.
    fn unknown_field(_field: &str, expected: &'static [&'static str]) -> Self {
        TraceError::Found(Shape::Struct(expected))
    }
}

/// The deserializer of the value at the start of `rest` (the rest of the path).
struct Tracer<'a> {
    rest: &'a [&'static str],
}

impl<'a> Tracer<'a> {
    /// Answers a request for a map-like value: descend by one key, or probe.
    fn map<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        match self.rest.split_first() {
            None => visitor.visit_map(OneEntry { key: Some(PROBE), value: None }),
            Some((&ELEMENT, rest)) => visitor.visit_seq(OneElement { value: Some(Tracer { rest }) }),
            Some((&key, rest)) => visitor.visit_map(OneEntry { key: Some(key), value: Some(Tracer { rest }) }),
        }
    }

    fn leaf(&self) -> TraceError {
        TraceError::Other(format!("leaf at {:?}", self.rest))
    }
}

impl<'de> Deserializer<'de> for Tracer<'_> {
    type Error = TraceError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.map(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        if self.rest.is_empty() {
            return Err(TraceError::Found(Shape::Struct(fields)));
        }
        self.map(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        match self.rest.split_first() {
            None => Err(TraceError::Found(Shape::Map)),
            Some((&ENTRY, rest)) => visitor.visit_map(OneEntry { key: Some(ENTRY), value: Some(Tracer { rest }) }),
            Some(_) => Err(self.leaf()),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        match self.rest.split_first() {
            None => Err(TraceError::Found(Shape::Seq)),
            Some((&ELEMENT, rest)) => visitor.visit_seq(OneElement { value: Some(Tracer { rest }) }),
            Some(_) => Err(self.leaf()),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        visitor.visit_unit()
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, TraceError> {
        Err(self.leaf())
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value, TraceError> {
        Err(self.leaf())
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        _visitor: V,
    ) -> Result<V::Value, TraceError> {
        Err(self.leaf())
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _visitor: V,
    ) -> Result<V::Value, TraceError> {
        Err(self.leaf())
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit identifier
    }
}

/// A map of one entry: `key`, whose value is traced further (`None`: the
/// probe, whose value is never asked for by a struct that refuses it).
struct OneEntry<'a> {
    key: Option<&'static str>,
    value: Option<Tracer<'a>>,
}

impl<'de> MapAccess<'de> for OneEntry<'_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, TraceError> {
        match self.key.take() {
            Some(key) => seed.deserialize(de::value::BorrowedStrDeserializer::new(key)).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, TraceError> {
        match self.value.take() {
            Some(tracer) => seed.deserialize(tracer),
            None => seed.deserialize(de::value::UnitDeserializer::new()),
        }
    }
}

/// A sequence of one element, traced further.
struct OneElement<'a> {
    value: Option<Tracer<'a>>,
}

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = TraceError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, TraceError> {
        self.value.take().map(|tracer| seed.deserialize(tracer)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with `path` set to `value`, the rest of the file minimal.
    fn yaml_with(path: &str, value: &str) -> String {
        let mut lines = Vec::new();
        let mut indent = String::new();
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let (key, elements) = match part.find("[]") {
                Some(at) => (&part[..at], part[at..].matches("[]").count()),
                None => (*part, 0),
            };
            if last && elements == 0 {
                lines.push(format!("{indent}{key}: {value}"));
                break;
            }
            lines.push(format!("{indent}{key}:"));
            indent.push_str("  ");
            for _ in 0..elements {
                lines.push(format!("{indent}-"));
                indent.push_str("  ");
            }
            if last {
                lines.push(format!("{indent}{value}"));
            }
        }
        // `- ` followed by a nested mapping on the next line is valid YAML.
        lines.join("\n") + "\n"
    }

    fn refused_as_unknown(path: &str, value: &str) -> Option<String> {
        let text = yaml_with(path, value);
        match super::super::parse_str(&text, "t.yaml") {
            Err(e) if e.to_string().contains("unknown field") => Some(format!("{e}\n{text}")),
            _ => None,
        }
    }

    #[test]
    fn finds_keys_at_every_level_and_through_custom_impls() {
        let keys = accepted_keys();
        for want in [
            "workers",
            "control_socket",
            "admin",
            "admin.listen",
            "log.access",
            "overload.max_fd_use",
            "defaults.connect_timeout",
            "defaults.socket.keepalive.idle",
            "routes",
            "routes[].name",
            "routes[].upstreams",
            // RawUpstream: string or map, through deserialize_any.
            "routes[].upstreams[].address",
            "routes[].upstreams[].weight",
            "routes[].upstreams[].backup",
            // Toggle<RawHealthCheck>, through deserialize_any.
            "routes[].health_check.interval",
            "routes[].outlier_detection",
            // Keepalive inside RawSocket, through deserialize_any.
            "routes[].socket.keepalive.idle",
            "routes[].socket.keepalive.count",
            "routes[].max_connection_rate_per_client.prefix_v6",
        ] {
            assert!(keys.iter().any(|k| k == want), "{want} not found in {keys:#?}");
        }
        for not_a_key in ["routes[]", "routes[].upstreams[]", "routes[].name.x", "workers.auto"] {
            assert!(!keys.iter().any(|k| k == not_a_key), "{not_a_key} is no key");
        }
    }

    #[test]
    fn defaults_are_route_keys() {
        let keys = accepted_keys();
        let defaults: Vec<&String> = keys.iter().filter(|k| k.starts_with("defaults.")).collect();
        assert!(defaults.len() > 20, "{defaults:?}");
        for d in defaults {
            let route = format!("routes[].{}", &d["defaults.".len()..]);
            assert!(keys.contains(&route), "{d} has no route key {route}");
        }
    }

    #[test]
    fn the_loader_knows_every_traced_key() {
        // A mistyped key is refused as unknown: the check below can tell.
        assert!(refused_as_unknown("routes[].health_check.intervall", "1s").is_some());
        assert!(refused_as_unknown("routes[].socket.keepalive.idel", "1s").is_some());
        assert!(refused_as_unknown("routes[].upstreams[].wieght", "1").is_some());
        // Every traced key gets past the unknown-field check, whatever its value.
        for key in accepted_keys() {
            for value in ["{}", "\"x\""] {
                assert_eq!(refused_as_unknown(&key, value), None, "the loader refuses {key}");
            }
        }
    }

    #[test]
    fn traced_keys_load_with_valid_values() {
        let config = |extra: &str| {
            format!(
                "workers: 1\noverload:\n  max_fd_use: 85%\nadmin:\n  listen: 127.0.0.1:0\nroutes:\n  - name: a\n    \
                 listen: 127.0.0.1:0\n    upstreams:\n      - address: 127.0.0.1:9\n        weight: 3\n{extra}"
            )
        };
        for extra in [
            "    health_check:\n      interval: 5s\n",
            "    socket:\n      keepalive:\n        idle: 30s\n        count: 3\n",
            "    max_connection_rate_per_client:\n      per_second: 10\n      prefix_v6: 48\n",
        ] {
            let text = config(extra);
            if let Err(e) = super::super::parse_str(&text, "t.yaml") {
                panic!("{e}\n{text}");
            }
        }
    }
}
