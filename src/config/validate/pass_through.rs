//! The keys a pass-through route (`original_destination: true`) may not
//! have: it sends each connection where its client dialled, so it lists no
//! upstreams, and nothing that chooses among upstreams or watches them.

use super::fail;
use crate::config::field::{FieldError, FieldPath};
use crate::config::schema::RawRoute;

/// A route that sends each connection to its original destination has no
/// upstreams, and none of the keys that choose among them or watch them.
pub(super) fn check(here: &FieldPath, r: &RawRoute) -> Result<(), FieldError> {
    if r.upstreams.is_some() {
        return fail(
            here.clone().key("upstreams"),
            format!(
                "route {:?} sends each connection to its original destination (original_destination: true): \
                 it lists no upstreams; give the upstreams a route of their own",
                r.name
            ),
        );
    }
    let set = [
        ("balance", r.balance.is_some()),
        ("retries", r.retries.is_some()),
        ("health_check", r.health_check.is_some()),
        ("outlier_detection", r.outlier_detection.is_some()),
    ];
    if let Some((key, _)) = set.into_iter().find(|(_, on)| *on) {
        return fail(
            here.clone().key(key),
            format!(
                "route {:?} sends each connection to its original destination (original_destination: true): \
                 there is one address per connection, the client's, so {key} has nothing to do; leave it out",
                r.name
            ),
        );
    }
    Ok(())
}
