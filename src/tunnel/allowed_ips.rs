//! Cryptokey routing table: which peer owns an inner address.
//!
//! Outgoing packets go to the peer with the longest prefix that contains the
//! destination; incoming packets are accepted only when their source maps
//! back to the peer that sent them. One hash map per prefix length keeps a
//! lookup to a handful of probes however many peers there are.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, Clone)]
pub struct AllowedIps<T> {
    v4: Family<T>,
    v6: Family<T>,
}

/// One address family: maps keyed by masked address, longest prefix first.
#[derive(Debug, Clone)]
struct Family<T> {
    bits: u8,
    by_len: Vec<(u8, HashMap<u128, T>)>,
}

impl<T> Default for AllowedIps<T> {
    fn default() -> Self {
        AllowedIps {
            v4: Family::new(32),
            v6: Family::new(128),
        }
    }
}

impl<T> AllowedIps<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `net` for `value`, replacing whoever held exactly that prefix.
    pub fn insert(&mut self, net: IpNet, value: T) {
        let (family, addr) = self.family_mut(net.addr());
        family.insert(addr, net.prefix_len(), value);
    }

    /// The value of the longest prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<&T> {
        let (family, addr) = self.family(addr);
        family.lookup(addr)
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn family(&self, addr: IpAddr) -> (&Family<T>, u128) {
        match addr {
            IpAddr::V4(a) => (&self.v4, u32::from(a) as u128),
            IpAddr::V6(a) => (&self.v6, u128::from(a)),
        }
    }

    fn family_mut(&mut self, addr: IpAddr) -> (&mut Family<T>, u128) {
        match addr {
            IpAddr::V4(a) => (&mut self.v4, u32::from(a) as u128),
            IpAddr::V6(a) => (&mut self.v6, u128::from(a)),
        }
    }
}

impl<T> Family<T> {
    fn new(bits: u8) -> Self {
        Family {
            bits,
            by_len: Vec::new(),
        }
    }

    fn mask(&self, addr: u128, len: u8) -> u128 {
        if len == 0 {
            return 0;
        }
        let host_bits = u32::from(self.bits - len);
        (addr >> host_bits) << host_bits
    }

    fn insert(&mut self, addr: u128, len: u8, value: T) {
        let key = self.mask(addr, len);
        let slot = match self.by_len.binary_search_by(|(l, _)| len.cmp(l)) {
            Ok(i) => i,
            Err(i) => {
                self.by_len.insert(i, (len, HashMap::new()));
                i
            }
        };
        self.by_len[slot].1.insert(key, value);
    }

    fn lookup(&self, addr: u128) -> Option<&T> {
        self.by_len
            .iter()
            .find_map(|(len, map)| map.get(&self.mask(addr, *len)))
    }

    fn len(&self) -> usize {
        self.by_len.iter().map(|(_, m)| m.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let mut table = AllowedIps::new();
        table.insert(net("0.0.0.0/0"), "default");
        table.insert(net("192.0.2.0/24"), "lan");
        table.insert(net("192.0.2.128/25"), "upper");
        table.insert(net("192.0.2.200/32"), "host");
        assert_eq!(table.lookup(ip("192.0.2.1")), Some(&"lan"));
        assert_eq!(table.lookup(ip("192.0.2.129")), Some(&"upper"));
        assert_eq!(table.lookup(ip("192.0.2.200")), Some(&"host"));
        assert_eq!(table.lookup(ip("198.51.100.7")), Some(&"default"));
        assert_eq!(table.len(), 4);
    }

    #[test]
    fn families_are_separate() {
        let mut table = AllowedIps::new();
        table.insert(net("0.0.0.0/0"), 4);
        assert_eq!(table.lookup(ip("2001:db8::1")), None);
        table.insert(net("2001:db8::/32"), 6);
        table.insert(net("2001:db8:1::/48"), 48);
        assert_eq!(table.lookup(ip("2001:db8::1")), Some(&6));
        assert_eq!(table.lookup(ip("2001:db8:1::9")), Some(&48));
        assert_eq!(table.lookup(ip("2001:db9::1")), None);
        assert_eq!(table.lookup(ip("203.0.113.9")), Some(&4));
    }

    #[test]
    fn host_bits_of_an_entry_do_not_matter() {
        let mut table = AllowedIps::new();
        table.insert(net("192.0.2.77/24"), 1);
        assert_eq!(table.lookup(ip("192.0.2.1")), Some(&1));
    }

    #[test]
    fn same_prefix_is_replaced() {
        let mut table = AllowedIps::new();
        table.insert(net("198.51.100.0/24"), 1);
        table.insert(net("198.51.100.0/24"), 2);
        assert_eq!(table.lookup(ip("198.51.100.5")), Some(&2));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn empty_table_finds_nothing() {
        let table: AllowedIps<u8> = AllowedIps::new();
        assert!(table.is_empty());
        assert_eq!(table.lookup(ip("192.0.2.1")), None);
        assert_eq!(table.lookup(ip("::1")), None);
    }
}
