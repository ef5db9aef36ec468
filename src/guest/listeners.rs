//! The guest's TCP listeners, from `/proc/net/tcp` and `/proc/net/tcp6` (the agent polls
//! them for automatic port forwarding: every [`POLL`], much faster than Lima's 3 s).

use std::collections::BTreeSet;
use std::time::Duration;

/// How often the agent looks.
pub const POLL: Duration = Duration::from_millis(200);

/// The ports some TCP socket listens on, on any address.
pub fn listening() -> BTreeSet<u16> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .flat_map(|table| parse(&std::fs::read_to_string(table).unwrap_or_default()))
        .collect()
}

/// The listening ports of one socket table (`sl local_address rem_address st …`, the
/// address as `HEXIP:HEXPORT`, state `0A` for LISTEN).
fn parse(table: &str) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state) = (fields.get(1)?, fields.get(3)?);
            (*state == "0A").then_some(())?;
            u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_listeners_on_any_address_and_nothing_else() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 2 1 0000000000000000 100 0 0 10 0
   2: 0100007F:0BB8 0100007F:A1B2 01 00000000:00000000 00:00000000 00000000  1000        0 3 1 0000000000000000 20 4 30 10 -1
";
        assert_eq!(parse(table), [8080, 3000]);
        let v6 = "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:1538 00000000000000000000000000000000:0000 0A
";
        assert_eq!(parse(v6), [5432]);
    }
}
