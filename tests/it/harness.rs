//! The harness itself: what the other tests rely on for not disturbing each other.

use std::collections::BTreeSet;
use std::process::Command;

use crate::common::*;

/// Rust threads (each its own open file, so each its own flock) and bats' `next_domid`
/// in other processes draw from the one allocator at the same time: no id twice.
#[test]
fn domids_are_unique_across_threads_processes_and_bats() {
    let bats = std::thread::spawn(|| {
        let out = Command::new("bash")
            .arg("-c")
            .arg("source \"$1/tests/bats/lib.bash\"; for i in $(seq 40); do next_domid; done")
            .arg("bash")
            .arg(REPO)
            .env("BATS_TEST_DIRNAME", format!("{REPO}/tests/bats"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.parse::<u32>().unwrap())
            .collect::<Vec<_>>()
    });
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                (0..40)
                    .flat_map(|i| domids(1 + i % 3))
                    .collect::<Vec<u32>>()
            })
        })
        .collect();
    let mut all: Vec<u32> = bats.join().unwrap();
    for t in threads {
        all.extend(t.join().unwrap());
    }
    assert_eq!(all.len(), 40 + 4 * (14 + 13 * 2 + 13 * 3));
    assert!(all.iter().all(|d| DOMIDS.contains(d)), "{all:?}");
    let distinct: BTreeSet<u32> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "an id was handed out twice");
}
