//! The guest NIC's MAC address: six bytes, unicast, written
//! `aa:bb:cc:dd:ee:ff`.

use std::fmt;
use std::str::FromStr;

/// A unicast MAC address (a multicast one cannot be a NIC's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr([u8; 6]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MacError {
    #[error("not six hex bytes separated by ':'")]
    Format,
    #[error("{0:?} is not a hex byte")]
    Byte(String),
    #[error("a multicast address (bit 0 of the first byte set)")]
    Multicast,
}

impl MacAddr {
    /// Locally administered, QEMU's default prefix.
    pub(crate) const DEFAULT: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

    pub fn new(bytes: [u8; 6]) -> Result<Self, MacError> {
        if bytes[0] & 1 != 0 {
            return Err(MacError::Multicast);
        }
        Ok(MacAddr(bytes))
    }

    pub fn bytes(self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for MacAddr {
    type Err = MacError;
    fn from_str(s: &str) -> Result<Self, MacError> {
        let parts: Vec<_> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(MacError::Format);
        }
        let mut mac = [0u8; 6];
        for (m, p) in mac.iter_mut().zip(parts) {
            // Two hex digits exactly: from_str_radix alone takes "+1".
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(MacError::Byte(p.into()));
            }
            *m = u8::from_str_radix(p, 16).map_err(|_| MacError::Byte(p.into()))?;
        }
        MacAddr::new(mac)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mac_reads_and_writes_as_six_hex_bytes() {
        let mac: MacAddr = "02:00:00:AA:bb:0c".parse().unwrap();
        assert_eq!(mac.bytes(), [2, 0, 0, 0xaa, 0xbb, 0x0c]);
        assert_eq!(mac.to_string(), "02:00:00:aa:bb:0c");
        assert_eq!(MacAddr::DEFAULT.to_string(), "52:54:00:12:34:56");
    }

    #[test]
    fn bad_macs_say_what_is_wrong() {
        for (s, want) in [
            ("02:00:00:00:01", MacError::Format),
            ("02:00:00:00:00:01:02", MacError::Format),
            ("02:00:00:00:00:zz", MacError::Byte("zz".into())),
            ("02:00:00:00:00:1", MacError::Byte("1".into())),
            ("02:00:00:00:00:+1", MacError::Byte("+1".into())),
            ("01:00:00:00:00:01", MacError::Multicast),
        ] {
            assert_eq!(s.parse::<MacAddr>(), Err(want), "{s}");
        }
    }
}
