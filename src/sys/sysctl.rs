//! Reading kernel settings from `/proc/sys` (never writing them: sluice
//! reports what should change and leaves the machine to its operator).

use std::str::FromStr;

/// Reads `/proc/sys/<name>` (for example `net/core/somaxconn`) and parses
/// its trimmed text; `None` if it is missing or not a `T`.
pub fn read<T: FromStr>(name: &str) -> Option<T> {
    std::fs::read_to_string(format!("/proc/sys/{name}")).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_numbers_and_rejects_garbage() {
        assert!(super::read::<u32>("net/core/somaxconn").is_some_and(|n| n > 0));
        assert_eq!(super::read::<u32>("kernel/ostype"), None, "\"Linux\" is not a number");
        assert_eq!(super::read::<u32>("no/such/setting"), None);
    }
}
