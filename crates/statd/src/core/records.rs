//! The monitored records of one instance, with the last state each one was told of.
//!
//! Sized for 100,000 records and more: each record is one compact [`Entry`] (64 bytes, its
//! names in one allocation, the file name not stored when it is the mon_name), held in a slab,
//! and found through two hash indexes of slab positions, by file and by host, so that SM_MON,
//! SM_UNMON and the matching of an SM_NOTIFY look at the records of one file or one host, never
//! at all of them.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::net::IpAddr;

use hashbrown::HashTable;
use nsm_store::{PRIV_SIZE, Record};

use crate::names::{canonical, ip_literal, same_host};

/// One registration and what the instance remembers of it.
#[derive(Debug)]
pub(crate) struct Entry {
    /// Order of addition (for [`Records::in_order`] and a file's line order).
    seq: u64,
    /// mon_name, my_name, then the file name when it is not the mon_name (a file named by
    /// rpc.statd); one allocation.
    names: Box<[u8]>,
    mon_len: u16,
    my_len: u16,
    /// The last state a notification carried for this record (in memory only, as nfs-utils).
    pub(crate) last_state: Option<i32>,
    prog: u32,
    vers: u32,
    proc_: u32,
    priv_: [u8; PRIV_SIZE],
}

impl Entry {
    fn new(seq: u64, file: &str, r: &Record) -> Self {
        let own = file.as_bytes() == r.mon_name.as_slice();
        let mut names = Vec::with_capacity(
            r.mon_name.len() + r.my_name.len() + if own { 0 } else { file.len() },
        );
        names.extend_from_slice(&r.mon_name);
        names.extend_from_slice(&r.my_name);
        if !own {
            names.extend_from_slice(file.as_bytes());
        }
        // Records are checked before they get here: each name is at most SM_MAXSTRLEN (1024).
        let len = |n: &[u8]| u16::try_from(n.len()).expect("a name of at most 1024 bytes");
        Self {
            seq,
            names: names.into_boxed_slice(),
            mon_len: len(&r.mon_name),
            my_len: len(&r.my_name),
            last_state: None,
            prog: r.my_prog,
            vers: r.my_vers,
            proc_: r.my_proc,
            priv_: r.priv_,
        }
    }

    pub(crate) fn mon_name(&self) -> &[u8] {
        &self.names[..usize::from(self.mon_len)]
    }

    pub(crate) fn my_name(&self) -> &[u8] {
        let at = usize::from(self.mon_len);
        &self.names[at..at + usize::from(self.my_len)]
    }

    /// The record file it is in.
    pub(crate) fn file(&self) -> &[u8] {
        let rest = &self.names[usize::from(self.mon_len) + usize::from(self.my_len)..];
        if rest.is_empty() {
            self.mon_name()
        } else {
            rest
        }
    }

    /// The callback: program, version, procedure.
    pub(crate) fn callback(&self) -> (u32, u32, u32) {
        (self.prog, self.vers, self.proc_)
    }

    pub(crate) fn priv_(&self) -> [u8; PRIV_SIZE] {
        self.priv_
    }

    pub(crate) fn record(&self) -> Record {
        Record {
            mon_name: self.mon_name().to_vec(),
            my_name: self.my_name().to_vec(),
            my_prog: self.prog,
            my_vers: self.vers,
            my_proc: self.proc_,
            priv_: self.priv_,
        }
    }

    /// The same registration as `r` (mon_name, my_name and callback), whatever its cookie.
    pub(crate) fn same_registration(&self, r: &Record) -> bool {
        self.mon_name() == r.mon_name.as_slice()
            && self.my_name() == r.my_name.as_slice()
            && self.callback() == (r.my_prog, r.my_vers, r.my_proc)
    }

    /// Exactly `r`, cookie included.
    pub(crate) fn is(&self, r: &Record) -> bool {
        self.same_registration(r) && self.priv_ == r.priv_
    }

    /// Replaces the cookie (a registration repeated with another one, or undoing that).
    pub(crate) fn set_priv(&mut self, priv_: [u8; PRIV_SIZE]) {
        self.priv_ = priv_;
    }
}

/// What the by-host index hashes: the canonical address of an address-literal mon_name, else
/// the lower-case first label (`client1` of `Client1.example.test`). Two names that
/// [`same_host`] calls one host have the same key, except an IPv6 literal without a dot and a
/// name whose first label is that literal (see [`Records::same_host_as`]).
#[derive(Debug, Clone, Copy)]
enum HostKey<'a> {
    Ip(IpAddr),
    Label(&'a [u8]),
}

impl<'a> HostKey<'a> {
    fn of(name: &'a [u8]) -> Self {
        match ip_literal(name) {
            Some(ip) => Self::Ip(canonical(ip)),
            None => Self::Label(first_label(name)),
        }
    }
}

fn first_label(name: &[u8]) -> &[u8] {
    name.split(|&b| b == b'.').next().unwrap_or(name)
}

/// The monitored records. Slab positions are `u32`: 4 billion records is beyond any server.
#[derive(Debug, Default)]
pub(crate) struct Records {
    slots: Vec<Option<Entry>>,
    /// Free positions in `slots`.
    free: Vec<u32>,
    /// Positions, by the hash of the record's file name.
    by_file: HashTable<u32>,
    /// Positions, by the hash of the record's [`HostKey`].
    by_host: HashTable<u32>,
    /// Records per lower-case mon_name that is not an address literal (the names an SM_NOTIFY
    /// may have to look up to match by address).
    hostnames: HashMap<Box<[u8]>, u32>,
    hasher: RandomState,
    next_seq: u64,
    pub(crate) len: usize,
}

fn hash_file(h: &RandomState, file: &[u8]) -> u64 {
    h.hash_one(file)
}

fn hash_host(h: &RandomState, key: HostKey<'_>) -> u64 {
    let mut s = h.build_hasher();
    match key {
        HostKey::Ip(ip) => {
            s.write_u8(0);
            ip.hash(&mut s);
        }
        HostKey::Label(label) => {
            s.write_u8(1);
            for b in label {
                s.write_u8(b.to_ascii_lowercase());
            }
        }
    }
    s.finish()
}

fn slot(slots: &[Option<Entry>], i: u32) -> &Entry {
    slots[i as usize]
        .as_ref()
        .expect("an index points at a live entry")
}

impl Records {
    /// Room for `n` records without growing.
    pub(crate) fn with_capacity(n: usize) -> Self {
        let mut r = Self::default();
        r.slots.reserve_exact(n);
        r.by_file = HashTable::with_capacity(n);
        r.by_host = HashTable::with_capacity(n);
        r
    }

    pub(crate) fn push(&mut self, file: String, record: Record) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.len += 1;
        let entry = Entry::new(seq, &file, &record);
        if ip_literal(&record.mon_name).is_none() {
            *self
                .hostnames
                .entry(record.mon_name.to_ascii_lowercase().into_boxed_slice())
                .or_default() += 1;
        }
        let h = &self.hasher;
        let (fh, hh) = (
            hash_file(h, entry.file()),
            hash_host(h, HostKey::of(entry.mon_name())),
        );
        let at = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(entry);
                i
            }
            None => {
                self.slots.push(Some(entry));
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 records")
            }
        };
        let slots = &self.slots;
        self.by_file
            .insert_unique(fh, at, |&i| hash_file(h, slot(slots, i).file()));
        self.by_host.insert_unique(hh, at, |&i| {
            hash_host(h, HostKey::of(slot(slots, i).mon_name()))
        });
    }

    /// Removes the entry at `at`.
    fn remove_at(&mut self, at: u32) -> Entry {
        let e = self.slots[at as usize]
            .take()
            .expect("removing a live entry");
        let h = &self.hasher;
        if let Ok(found) = self
            .by_file
            .find_entry(hash_file(h, e.file()), |&i| i == at)
        {
            found.remove();
        }
        if let Ok(found) = self
            .by_host
            .find_entry(hash_host(h, HostKey::of(e.mon_name())), |&i| i == at)
        {
            found.remove();
        }
        if ip_literal(e.mon_name()).is_none() {
            let key = e.mon_name().to_ascii_lowercase();
            if let Some(n) = self.hostnames.get_mut(key.as_slice()) {
                *n -= 1;
                if *n == 0 {
                    self.hostnames.remove(key.as_slice());
                }
            }
        }
        self.free.push(at);
        self.len -= 1;
        e
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.slots.iter().flatten()
    }

    pub(crate) fn get(&self, at: u32) -> &Entry {
        slot(&self.slots, at)
    }

    pub(crate) fn get_mut(&mut self, at: u32) -> &mut Entry {
        self.slots[at as usize]
            .as_mut()
            .expect("an index points at a live entry")
    }

    /// Every entry, in the order added.
    pub(crate) fn in_order(&self) -> Vec<&Entry> {
        let mut all: Vec<&Entry> = self.iter().collect();
        all.sort_unstable_by_key(|e| e.seq);
        all
    }

    /// The positions of the entries in `file`, in the order they were added.
    pub(crate) fn in_file(&self, file: &[u8]) -> Vec<u32> {
        let slots = &self.slots;
        let mut found: Vec<u32> = self
            .by_file
            .iter_hash(hash_file(&self.hasher, file))
            .copied()
            .filter(|&i| slot(slots, i).file() == file)
            .collect();
        found.sort_unstable_by_key(|&i| slot(slots, i).seq);
        found
    }

    /// The positions of the entries whose mon_name is [`same_host`] as `name`.
    pub(crate) fn same_host_as(&self, name: &[u8]) -> Vec<u32> {
        let mut keys = vec![HostKey::of(name)];
        match keys[0] {
            // `fe80::1` and `fe80::1.example.test`.
            HostKey::Ip(_) if !name.contains(&b'.') => keys.push(HostKey::Label(name)),
            HostKey::Label(label) if label.len() < name.len() => {
                if let Some(ip) = ip_literal(label) {
                    keys.push(HostKey::Ip(canonical(ip)));
                }
            }
            _ => {}
        }
        let slots = &self.slots;
        let mut found: Vec<u32> = keys
            .into_iter()
            .flat_map(|k| self.by_host.iter_hash(hash_host(&self.hasher, k)))
            .copied()
            .filter(|&i| same_host(slot(slots, i).mon_name(), name))
            .collect();
        found.sort_unstable();
        found.dedup();
        found
    }

    /// The positions of the entries whose mon_name is an address literal of `ip`.
    pub(crate) fn with_address(&self, ip: IpAddr) -> Vec<u32> {
        let ip = canonical(ip);
        let slots = &self.slots;
        self.by_host
            .iter_hash(hash_host(&self.hasher, HostKey::Ip(ip)))
            .copied()
            .filter(|&i| ip_literal(slot(slots, i).mon_name()).map(canonical) == Some(ip))
            .collect()
    }

    /// The positions of the entries whose mon_name is `lower` in any ASCII case.
    pub(crate) fn named(&self, lower: &[u8]) -> Vec<u32> {
        let slots = &self.slots;
        self.by_host
            .iter_hash(hash_host(&self.hasher, HostKey::of(lower)))
            .copied()
            .filter(|&i| slot(slots, i).mon_name().eq_ignore_ascii_case(lower))
            .collect()
    }

    /// The mon_names (lower case) that are not address literals.
    pub(crate) fn hostnames(&self) -> impl Iterator<Item = &[u8]> {
        self.hostnames.keys().map(|k| &**k)
    }

    /// The file the records of `mon_name` go to: the one a record of it was loaded from if that
    /// was named otherwise (rpc.statd names a file by the mon_name's canonical DNS name, e.g.
    /// `client1.example.com` for a kernel's `198.51.100.20`: a later SM_MON of the mon_name
    /// rewrites that file instead of adding a second one, and the peer is notified once), else
    /// `own` (the mon_name's own file name).
    pub(crate) fn file_for(&self, mon_name: &[u8], own: String) -> String {
        let slots = &self.slots;
        self.by_host
            .iter_hash(hash_host(&self.hasher, HostKey::of(mon_name)))
            .map(|&i| slot(slots, i))
            .filter(|e| e.mon_name() == mon_name && e.file() != mon_name)
            .max_by_key(|e| e.seq)
            .map_or(own, |e| String::from_utf8_lossy(e.file()).into_owned())
    }

    /// Every record stored in `file`, in the order they were added.
    pub(crate) fn content(&self, file: &str) -> Vec<Record> {
        self.in_file(file.as_bytes())
            .into_iter()
            .map(|i| self.get(i).record())
            .collect()
    }

    /// Removes the entries at `positions`; returns their records (in the order they were
    /// added) and the files they were in (sorted).
    pub(crate) fn remove(&mut self, positions: &[u32]) -> (Vec<Record>, Vec<String>) {
        let mut gone: Vec<Entry> = positions.iter().map(|&i| self.remove_at(i)).collect();
        gone.sort_unstable_by_key(|e| e.seq);
        let mut files: Vec<String> = gone
            .iter()
            .map(|e| String::from_utf8_lossy(e.file()).into_owned())
            .collect();
        files.sort_unstable();
        files.dedup();
        (gone.iter().map(Entry::record).collect(), files)
    }

    /// Removes the records `pred` selects, looking at every record (SM_UNMON_ALL); returns
    /// them and the files they were in.
    pub(crate) fn remove_where(
        &mut self,
        pred: impl Fn(&Entry) -> bool,
    ) -> (Vec<Record>, Vec<String>) {
        let chosen: Vec<u32> = (0..self.slots.len())
            .filter(|&i| self.slots[i].as_ref().is_some_and(&pred))
            .map(|i| u32::try_from(i).expect("fewer than 2^32 records"))
            .collect();
        self.remove(&chosen)
    }

    /// Removes one record equal to `record` from `file` (undoing an SM_MON).
    pub(crate) fn remove_one(&mut self, file: &str, record: &Record) {
        if let Some(at) = self
            .in_file(file.as_bytes())
            .into_iter()
            .find(|&i| self.get(i).is(record))
        {
            self.remove_at(at);
        }
    }

    pub(crate) fn clear(&mut self) {
        let hasher = std::mem::take(&mut self.hasher);
        let next_seq = self.next_seq;
        *self = Self {
            hasher,
            next_seq,
            ..Self::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nsm_xdr::nsm::NLM_PROG;

    pub(crate) fn rec(mon: &str, my: &str) -> Record {
        Record {
            mon_name: mon.into(),
            my_name: my.into(),
            my_prog: NLM_PROG,
            my_vers: 3,
            my_proc: 16,
            priv_: [7; 16],
        }
    }

    fn mons(r: &Records, at: &[u32]) -> Vec<String> {
        let mut v: Vec<String> = at
            .iter()
            .map(|&i| String::from_utf8_lossy(r.get(i).mon_name()).into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_mon_name_loaded_from_a_file_named_otherwise_stays_in_that_file() {
        let mut r = Records::default();
        // As rpc.statd left it: the kernel's address, in a file named by its reverse name.
        r.push("client1.example.test".into(), rec("198.51.100.20", "srv"));
        r.push("198.51.100.21".into(), rec("198.51.100.21", "srv"));
        let own = |m: &str| m.to_owned();
        assert_eq!(
            r.file_for(b"198.51.100.20", own("198.51.100.20")),
            "client1.example.test"
        );
        assert_eq!(
            r.file_for(b"198.51.100.21", own("198.51.100.21")),
            "198.51.100.21"
        );
        assert_eq!(r.file_for(b"new", own("new")), "new");
        assert_eq!(r.content("client1.example.test").len(), 1);
        assert!(r.content("198.51.100.20").is_empty());
        // Once that file is empty, the mon_name's own file name is used again.
        r.remove_where(|x| x.mon_name() == b"198.51.100.20");
        assert_eq!(
            r.file_for(b"198.51.100.20", own("198.51.100.20")),
            "198.51.100.20"
        );
    }

    #[test]
    fn records_by_file_keep_order_and_count() {
        let mut r = Records::default();
        r.push("a".into(), rec("a", "s1"));
        r.push("b".into(), rec("b", "s1"));
        r.push("a".into(), rec("a", "s2"));
        assert_eq!(r.len, 3);
        assert_eq!(r.content("a"), [rec("a", "s1"), rec("a", "s2")]);
        assert!(r.content("zz").is_empty());
        let (removed, files) = r.remove_where(|x| x.my_name() == b"s1");
        assert_eq!(removed, [rec("a", "s1"), rec("b", "s1")]);
        assert_eq!(files, ["a", "b"]);
        assert_eq!(r.len, 1);
        assert!(r.content("b").is_empty(), "an emptied file is forgotten");
        r.remove_one("a", &rec("a", "s2"));
        assert_eq!((r.len, r.iter().count()), (0, 0));
        r.remove_one("a", &rec("a", "s2"));
        assert_eq!(r.len, 0, "removing what is not there changes nothing");
        r.push("c".into(), rec("c", "s1"));
        r.clear();
        assert_eq!((r.len, r.iter().count()), (0, 0));
        assert!(r.content("c").is_empty() && r.hostnames().next().is_none());
    }

    #[test]
    fn an_entry_keeps_every_field_of_its_record_in_64_bytes() {
        assert_eq!(size_of::<Option<Entry>>(), 64);
        let mut r = Records::default();
        let mut x = rec("Client9.Example.Test", "srv a");
        x.my_prog = 200_000;
        x.my_vers = 4;
        x.my_proc = 24;
        x.priv_ = *b"0123456789abcdef";
        r.push("client9.example.test".into(), x.clone());
        let all = r.in_file(b"client9.example.test");
        assert_eq!(all.len(), 1);
        let e = r.get(all[0]);
        assert_eq!(e.record(), x);
        assert_eq!(e.file(), b"client9.example.test");
        // The record's own file name is not stored twice.
        r.push(
            "Client9.Example.Test".into(),
            rec("Client9.Example.Test", "b"),
        );
        assert_eq!(
            r.content("Client9.Example.Test"),
            [rec("Client9.Example.Test", "b")]
        );
    }

    /// The indexes find what a walk over every record finds, through removals and slot reuse.
    #[test]
    fn indexes_find_what_a_walk_finds() {
        let mut r = Records::default();
        let names = [
            "web1",
            "web1.prod.example",
            "WEB1.staging.example",
            "web10.prod.example",
            "198.51.100.7",
            "::ffff:198.51.100.7",
            "2001:db8::7",
            "2001:DB8:0::7",
            "fe80::1",
            "fe80::1.odd.example",
            "198.51.100.70",
        ];
        for (i, n) in names.iter().enumerate() {
            r.push(
                (*n).to_owned(),
                rec(n, if i % 2 == 0 { "s1" } else { "s2" }),
            );
        }
        let walk = |r: &Records, f: &dyn Fn(&Entry) -> bool| -> Vec<String> {
            let mut v: Vec<String> = r
                .iter()
                .filter(|e| f(e))
                .map(|e| String::from_utf8_lossy(e.mon_name()).into_owned())
                .collect();
            v.sort();
            v
        };
        let check = |r: &Records| {
            for q in names
                .iter()
                .chain(&["WEB1", "web1.other.example", "unknown", "fe80::1.x"])
            {
                let q = q.as_bytes();
                assert_eq!(
                    mons(r, &r.same_host_as(q)),
                    walk(r, &|e| same_host(e.mon_name(), q)),
                    "same host as {}",
                    String::from_utf8_lossy(q)
                );
                let lower = q.to_ascii_lowercase();
                assert_eq!(
                    mons(r, &r.named(&lower)),
                    walk(r, &|e| e.mon_name().eq_ignore_ascii_case(&lower)),
                );
            }
            for ip in ["198.51.100.7", "2001:db8::7", "fe80::1", "198.51.100.8"] {
                let ip: IpAddr = ip.parse().expect("an address");
                assert_eq!(
                    mons(r, &r.with_address(ip)),
                    walk(r, &|e| ip_literal(e.mon_name()).map(canonical) == Some(ip)),
                );
            }
            let mut hosts: Vec<String> = r
                .hostnames()
                .map(|h| String::from_utf8_lossy(h).into_owned())
                .collect();
            hosts.sort();
            let mut want = walk(r, &|e| ip_literal(e.mon_name()).is_none());
            for w in &mut want {
                *w = w.to_ascii_lowercase();
            }
            want.sort();
            want.dedup();
            assert_eq!(hosts, want);
        };
        check(&r);
        assert_eq!(
            mons(&r, &r.same_host_as(b"web1")),
            ["WEB1.staging.example", "web1", "web1.prod.example"]
        );
        assert_eq!(
            mons(
                &r,
                &r.with_address("198.51.100.7".parse().expect("an address"))
            ),
            ["198.51.100.7", "::ffff:198.51.100.7"]
        );
        r.remove_where(|e| e.my_name() == b"s1");
        check(&r);
        for n in ["web1.prod.example", "web1", "2001:db8::7"] {
            r.push(n.to_owned(), rec(n, "s3"));
        }
        check(&r);
        assert_eq!(r.len, r.iter().count());
    }
}
