//! Server names and the table that picks a route from a ClientHello.
//!
//! Names compare without case and without a trailing dot. A pattern is an
//! exact name or a one-label wildcard (`*.example.com` matches
//! `a.example.com`, not `example.com` nor `b.a.example.com`), as
//! certificates use them; an exact name beats a wildcard (and since a
//! wildcard covers exactly one label, at most one wildcard can match a
//! name: the longer one always wins). Under one pattern, routes may split
//! by ALPN: the client's protocols are tried in its order, then the route of
//! that pattern without `alpn:`. The most specific pattern that claims a
//! name decides, and a claimed name whose protocols no route takes has no
//! route (it never falls through to a wildcard or the default). A hello
//! without SNI, or with a name no pattern claims, goes to the default route
//! (the one without `server_names`), if there is one.

use std::collections::HashMap;

/// A server name pattern of a route.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// This name exactly.
    Exact(String),
    /// Any one label followed by this suffix (the part after `*.`).
    Wildcard(String),
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Exact(n) => f.write_str(n),
            Pattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// A host name as compared: lowercase ASCII, no trailing dot, labels of 1 to
/// 63 letters, digits, `-` or `_`, 253 characters at most. `None` if `name`
/// is not one.
pub fn normalize(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let ok_label = |l: &str| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    name.split('.').all(ok_label).then(|| name.to_ascii_lowercase())
}

/// Parses a configured pattern: a host name or `*.` followed by one.
pub fn pattern(s: &str) -> Result<Pattern, String> {
    if let Some(rest) = s.strip_prefix("*.") {
        let suffix = normalize(rest).ok_or_else(|| format!("{s:?}: what follows \"*.\" is not a host name"))?;
        if !suffix.contains('.') {
            return Err(format!("{s:?}: a wildcard must leave at least two labels (like *.example.com)"));
        }
        return Ok(Pattern::Wildcard(suffix));
    }
    if s.contains('*') {
        return Err(format!("{s:?}: a wildcard is \"*.\" followed by a name, and covers exactly one label"));
    }
    normalize(s).map(Pattern::Exact).ok_or_else(|| format!("{s:?} is not a host name"))
}

/// One route's claim under a pattern.
#[derive(Clone, Debug)]
struct Claim {
    /// ALPN protocols it takes; empty: any (the pattern's fallback).
    alpn: Vec<Vec<u8>>,
    /// Index of the route in its listener's list.
    route: usize,
}

/// Why two routes can't share an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The route (index) whose claim is refused.
    pub route: usize,
    /// Which of its names (index in its `server_names`), if the conflict is about one.
    pub name: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// What a listener's routes claim, built once per configuration.
#[derive(Clone, Debug, Default)]
pub struct NameTable {
    exact: HashMap<String, Vec<Claim>>,
    wildcard: HashMap<String, Vec<Claim>>,
    default: Option<usize>,
}

/// One route as the table sees it: its name, its server names (empty: the
/// default) and ALPN protocols.
#[derive(Debug)]
pub struct RouteNames<'a> {
    /// The route's name (for messages).
    pub route: &'a str,
    /// Its `server_names`, parsed.
    pub names: &'a [Pattern],
    /// Its `alpn`.
    pub alpn: &'a [String],
}

impl NameTable {
    /// The table for the routes of one address, in config order, or the
    /// first conflict: a second default, a pattern claimed twice for the
    /// same protocols, or a pattern with two fallbacks.
    pub fn build(routes: &[RouteNames<'_>]) -> Result<NameTable, Conflict> {
        let mut t = NameTable::default();
        for (i, r) in routes.iter().enumerate() {
            if r.names.is_empty() {
                if let Some(first) = t.default {
                    return Err(Conflict {
                        route: i,
                        name: None,
                        message: format!(
                            "route {:?} is already the default of this address (no server_names): only one may be",
                            routes[first].route
                        ),
                    });
                }
                t.default = Some(i);
                continue;
            }
            let alpn: Vec<Vec<u8>> = r.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
            for (j, p) in r.names.iter().enumerate() {
                let claims = match p {
                    Pattern::Exact(n) => t.exact.entry(n.clone()).or_default(),
                    Pattern::Wildcard(s) => t.wildcard.entry(s.clone()).or_default(),
                };
                for c in claims.iter() {
                    let clash = if alpn.is_empty() || c.alpn.is_empty() {
                        alpn.is_empty() && c.alpn.is_empty()
                    } else {
                        alpn.iter().any(|a| c.alpn.contains(a))
                    };
                    if clash {
                        let what =
                            if alpn.is_empty() { String::new() } else { " for the same ALPN protocol".to_owned() };
                        return Err(Conflict {
                            route: i,
                            name: Some(j),
                            message: format!(
                                "{p} is claimed twice on this address{what} (also by route {:?})",
                                routes[c.route].route
                            ),
                        });
                    }
                }
                claims.push(Claim { alpn: alpn.clone(), route: i });
            }
        }
        Ok(t)
    }

    /// The route (index) for a hello with `server_name` offering `alpn`, or
    /// `None` (no route).
    pub fn choose(&self, server_name: Option<&str>, alpn: &[Vec<u8>]) -> Option<usize> {
        let Some(name) = server_name else {
            return self.default;
        };
        let claims = self.exact.get(name).or_else(|| {
            let (_, suffix) = name.split_once('.')?;
            self.wildcard.get(suffix)
        });
        let Some(claims) = claims else {
            return self.default;
        };
        for offered in alpn {
            if let Some(c) = claims.iter().find(|c| c.alpn.contains(offered)) {
                return Some(c.route);
            }
        }
        claims.iter().find(|c| c.alpn.is_empty()).map(|c| c.route)
    }

    /// Every pattern and the routes (with their ALPN) it leads to, sorted, for `sluice check`.
    pub fn describe(&self, route_name: impl Fn(usize) -> String) -> Vec<String> {
        let mut lines = Vec::new();
        let mut add = |p: Pattern, claims: &[Claim]| {
            for c in claims {
                let alpn = if c.alpn.is_empty() {
                    String::new()
                } else {
                    let ps: Vec<String> = c.alpn.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect();
                    format!(" (alpn {})", ps.join(", "))
                };
                lines.push((p.clone(), format!("{p}{alpn} -> {}", route_name(c.route))));
            }
        };
        for (n, c) in &self.exact {
            add(Pattern::Exact(n.clone()), c);
        }
        for (s, c) in &self.wildcard {
            add(Pattern::Wildcard(s.clone()), c);
        }
        lines.sort_by(|a, b| a.1.cmp(&b.1));
        let mut out: Vec<String> = lines.into_iter().map(|(_, l)| l).collect();
        out.push(match self.default {
            Some(d) => format!("(no SNI, or a name no route claims) -> {}", route_name(d)),
            None => "(no SNI, or a name no route claims) -> reset (no_route)".to_owned(),
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(ps: &[&str]) -> Vec<Pattern> {
        ps.iter().map(|p| pattern(p).unwrap()).collect()
    }

    fn alpn(ps: &[&str]) -> Vec<String> {
        ps.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn names_normalize_and_patterns_validate() {
        assert_eq!(normalize("WWW.Example.com.").as_deref(), Some("www.example.com"));
        assert_eq!(normalize("_svc.a-b.c").as_deref(), Some("_svc.a-b.c"));
        for bad in ["", ".", "a..b", ".a", "a b", "ä.com", &"x".repeat(64), &"a.".repeat(130)] {
            assert_eq!(normalize(bad), None, "{bad:?}");
        }
        assert_eq!(pattern("*.Example.COM"), Ok(Pattern::Wildcard("example.com".into())));
        assert_eq!(pattern("api.example.com."), Ok(Pattern::Exact("api.example.com".into())));
        for bad in ["*", "*.", "*.com", "a.*.com", "*a.example.com", "**.example.com", "x y"] {
            assert!(pattern(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exact_beats_wildcard_and_a_wildcard_covers_one_label() {
        let (a, b, c) = (pats(&["*.example.com"]), pats(&["api.example.com"]), pats(&["*.eu.example.com"]));
        let t = NameTable::build(&[
            RouteNames { route: "r", names: &a, alpn: &[] },
            RouteNames { route: "r", names: &b, alpn: &[] },
            RouteNames { route: "r", names: &c, alpn: &[] },
            RouteNames { route: "r", names: &[], alpn: &[] },
        ])
        .unwrap();
        assert_eq!(t.choose(Some("api.example.com"), &[]), Some(1));
        assert_eq!(t.choose(Some("www.example.com"), &[]), Some(0));
        assert_eq!(t.choose(Some("x.eu.example.com"), &[]), Some(2), "the longer wildcard");
        assert_eq!(t.choose(Some("a.b.example.com"), &[]), Some(3), "two labels: no wildcard, the default");
        assert_eq!(t.choose(Some("example.com"), &[]), Some(3));
        assert_eq!(t.choose(None, &[]), Some(3), "no SNI: the default");
    }

    #[test]
    fn alpn_splits_a_name_and_a_claimed_name_never_falls_through() {
        let n = pats(&["app.example.com"]);
        let w = pats(&["*.example.com"]);
        let (h2, h1) = (alpn(&["h2"]), alpn(&["http/1.1"]));
        let t = NameTable::build(&[
            RouteNames { route: "r", names: &n, alpn: &h2 },
            RouteNames { route: "r", names: &n, alpn: &h1 },
            RouteNames { route: "r", names: &w, alpn: &[] },
        ])
        .unwrap();
        let offer = |ps: &[&str]| ps.iter().map(|p| p.as_bytes().to_vec()).collect::<Vec<_>>();
        assert_eq!(t.choose(Some("app.example.com"), &offer(&["h2", "http/1.1"])), Some(0), "the client's order");
        assert_eq!(t.choose(Some("app.example.com"), &offer(&["http/1.1", "h2"])), Some(1));
        assert_eq!(t.choose(Some("app.example.com"), &offer(&["h3"])), None, "claimed, no protocol taken: no route");
        assert_eq!(t.choose(Some("app.example.com"), &[]), None);
        assert_eq!(t.choose(Some("web.example.com"), &offer(&["h3"])), Some(2));
        assert_eq!(t.choose(None, &[]), None, "no default: no route");
    }

    #[test]
    fn conflicts_name_the_second_claim() {
        let a = pats(&["a.example.com", "b.example.com"]);
        let b = pats(&["B.EXAMPLE.COM."]);
        let e = NameTable::build(&[
            RouteNames { route: "r", names: &a, alpn: &[] },
            RouteNames { route: "r", names: &b, alpn: &[] },
        ])
        .unwrap_err();
        assert_eq!((e.route, e.name), (1, Some(0)));
        assert!(e.message.contains("b.example.com is claimed twice"), "{}", e.message);
        let e = NameTable::build(&[
            RouteNames { route: "r", names: &[], alpn: &[] },
            RouteNames { route: "r", names: &[], alpn: &[] },
        ])
        .unwrap_err();
        assert_eq!((e.route, e.name), (1, None));
        let (h2, both) = (alpn(&["h2"]), alpn(&["http/1.1", "h2"]));
        let e = NameTable::build(&[
            RouteNames { route: "r", names: &b, alpn: &h2 },
            RouteNames { route: "r", names: &b, alpn: &both },
        ])
        .unwrap_err();
        assert!(e.message.contains("same ALPN protocol"), "{}", e.message);
        // Different protocols, or one fallback beside protocol routes: fine.
        assert!(
            NameTable::build(&[
                RouteNames { route: "r", names: &b, alpn: &h2 },
                RouteNames { route: "r", names: &b, alpn: &alpn(&["http/1.1"]) },
                RouteNames { route: "r", names: &b, alpn: &[] },
            ])
            .is_ok()
        );
    }

    #[test]
    fn describe_lists_every_claim_and_the_default() {
        let a = pats(&["*.example.com", "api.example.com"]);
        let t = NameTable::build(&[RouteNames { route: "r", names: &a, alpn: &alpn(&["h2"]) }]).unwrap();
        let lines = t.describe(|i| format!("r{i}"));
        assert_eq!(
            lines,
            vec![
                "*.example.com (alpn h2) -> r0",
                "api.example.com (alpn h2) -> r0",
                "(no SNI, or a name no route claims) -> reset (no_route)"
            ]
        );
    }
}
