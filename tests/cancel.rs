//! The core's stop flag (`moefast::util::cancel`), in its own test binary: the flag is
//! process-wide, and setting it beside the unit tests would cut their searches short.

use moefast::util::cancel;
use moefast::{optimize, SubsetTable};

fn table() -> SubsetTable {
    let mut ids = Vec::new();
    let mut x = 7u64;
    for _ in 0..4000 {
        let mut row: Vec<i64> = Vec::new();
        while row.len() < 4 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let e = ((x >> 33) % 24) as i64 % (4 + (x >> 60) as i64 * 2);
            if !row.contains(&e) {
                row.push(e);
            }
        }
        ids.extend(row);
    }
    SubsetTable::from_topk(&ids, 4, 24, None).unwrap()
}

#[test]
fn a_stop_lasts_while_calls_run_and_leaves_complete_placements() {
    // Nothing runs: a request is dropped, so the next call is not stopped.
    cancel::request();
    assert!(!cancel::requested());

    let first = cancel::Scope::enter();
    let second = cancel::Scope::enter();
    cancel::request();
    assert!(cancel::requested());
    // The searches stop at once, yet the placement still fills every slot.
    let t = table();
    let p = optimize(&t, 4, 9, "greedy", 0).unwrap();
    assert_eq!(p.slots_used(), vec![9; 4]);
    assert!((0..24).all(|e| !p.gpus_of(e).is_empty()));
    drop(first);
    assert!(cancel::requested(), "cleared while a call still runs");
    drop(second);
    assert!(!cancel::requested(), "not cleared when the last call ended");
}
