//! The monitored records of one instance, by file, with the last state each one was told of.

use std::collections::HashMap;

use nsm_store::Record;

/// One registration and what the instance remembers of it.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Order of addition (for [`Records::in_order`]).
    pub(crate) seq: u64,
    pub(crate) record: Record,
    /// The last state a notification carried for this record (in memory only, as nfs-utils).
    pub(crate) last_state: Option<i32>,
}

/// The monitored records, by file (one file per mon_name, as nfs-utils), so SM_MON finds and
/// rewrites a record's file without walking the others: its cost does not grow with the
/// number of records.
#[derive(Debug, Default)]
pub(crate) struct Records {
    /// Each file's records, in the order they were added (the file's line order).
    pub(crate) files: HashMap<String, Vec<Entry>>,
    /// mon_names whose records were loaded from a file named otherwise (rpc.statd names a
    /// file by the mon_name's canonical DNS name, e.g. `client1.example.com` for a kernel's
    /// `198.51.100.20`): that file, so a later SM_MON of the same mon_name rewrites it
    /// instead of adding a second file, and the peer is notified once.
    pub(crate) adopted: HashMap<Vec<u8>, String>,
    next_seq: u64,
    pub(crate) len: usize,
}

impl Records {
    pub(crate) fn push(&mut self, file: String, record: Record) {
        if file.as_bytes() != record.mon_name.as_slice() {
            self.adopted.insert(record.mon_name.clone(), file.clone());
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.len += 1;
        self.files.entry(file).or_default().push(Entry {
            seq,
            record,
            last_state: None,
        });
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.files.values().flatten()
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.files.values_mut().flatten()
    }

    /// Every entry, in the order added.
    pub(crate) fn in_order(&self) -> Vec<&Entry> {
        let mut all: Vec<&Entry> = self.iter().collect();
        all.sort_unstable_by_key(|e| e.seq);
        all
    }

    /// The file the records of `mon_name` go to: the one they were loaded from if it was
    /// named otherwise and still holds records, else `own` (the mon_name's own file name).
    pub(crate) fn file_for(&self, mon_name: &[u8], own: String) -> String {
        match self.adopted.get(mon_name) {
            Some(f) if self.files.contains_key(f) => f.clone(),
            _ => own,
        }
    }

    /// Every record stored in `file`, in the order they were added.
    pub(crate) fn content(&self, file: &str) -> Vec<Record> {
        self.files
            .get(file)
            .map(|v| v.iter().map(|e| e.record.clone()).collect())
            .unwrap_or_default()
    }

    /// Removes the records `pred` selects; returns them and the files they were in.
    pub(crate) fn remove_where(
        &mut self,
        pred: impl Fn(&Record) -> bool,
    ) -> (Vec<Record>, Vec<String>) {
        let (mut removed, mut files) = (Vec::new(), Vec::new());
        for (file, list) in &mut self.files {
            let before = removed.len();
            list.retain(|e| {
                if pred(&e.record) {
                    removed.push(e.record.clone());
                    false
                } else {
                    true
                }
            });
            if removed.len() > before {
                files.push(file.clone());
            }
        }
        self.files.retain(|_, list| !list.is_empty());
        let files_left = &self.files;
        self.adopted.retain(|_, f| files_left.contains_key(f));
        self.len -= removed.len();
        (removed, files)
    }

    /// Removes one record equal to `record` from `file` (undoing an SM_MON).
    pub(crate) fn remove_one(&mut self, file: &str, record: &Record) {
        if let Some(list) = self.files.get_mut(file)
            && let Some(i) = list.iter().position(|e| e.record == *record)
        {
            list.remove(i);
            self.len -= 1;
            if list.is_empty() {
                self.files.remove(file);
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.files.clear();
        self.adopted.clear();
        self.len = 0;
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
        // Once that file is empty, the mon_name's own file name is used again.
        r.remove_where(|x| x.mon_name == b"198.51.100.20");
        assert!(r.adopted.is_empty());
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
        let (removed, files) = r.remove_where(|x| x.my_name == b"s1");
        assert_eq!(removed.len(), 2);
        let mut files = files;
        files.sort();
        assert_eq!(files, ["a", "b"]);
        assert_eq!(r.len, 1);
        assert!(!r.files.contains_key("b"), "an emptied file is forgotten");
        r.remove_one("a", &rec("a", "s2"));
        assert_eq!((r.len, r.files.len()), (0, 0));
        r.remove_one("a", &rec("a", "s2"));
        assert_eq!(r.len, 0, "removing what is not there changes nothing");
        r.push("c".into(), rec("c", "s1"));
        r.clear();
        assert_eq!((r.len, r.iter().count()), (0, 0));
    }
}
