//! The placements engines ship, to compare against (they ignore co-activation):
//! - contiguous: experts 0..E/G-1 on GPU 0 and so on (vLLM's and SGLang's default),
//!   extra slots holding replicas of the most loaded experts;
//! - round robin: expert e on GPU e mod G, extra slots likewise;
//! - EPLB (DeepSeek, non-hierarchical): replicas to the expert of highest load per
//!   replica, then packed heaviest first onto the lightest GPU with a free slot.
//!
//! Loads are per-expert token counts (`SubsetTable::expert_load`). Every GPU ends with
//! exactly `slots` distinct experts.

use super::initial::balanced_counts;
use crate::layout::Layout;

/// Load per replica of an expert, compared exactly as fractions.
fn heavier(load: &[f64], a: usize, reps_a: usize, b: usize, reps_b: usize) -> bool {
    let (x, y) = (load[a] * reps_b as f64, load[b] * reps_a as f64);
    x > y || (x == y && a < b)
}

pub fn contiguous(load: &[f64], num_gpus: usize, slots: usize) -> Layout {
    let mut layout = Layout::new(load.len(), num_gpus);
    let mut e = 0;
    for (g, count) in balanced_counts(load.len(), num_gpus)
        .into_iter()
        .enumerate()
    {
        for _ in 0..count {
            layout.add(e, g);
            e += 1;
        }
    }
    fill_with_loaded(&mut layout, load, slots);
    layout
}

pub fn round_robin(load: &[f64], num_gpus: usize, slots: usize) -> Layout {
    let mut layout = Layout::new(load.len(), num_gpus);
    for e in 0..load.len() {
        layout.add(e, e % num_gpus);
    }
    fill_with_loaded(&mut layout, load, slots);
    layout
}

/// Fills every free slot, GPU by GPU in turns, with the expert of highest load per
/// replica that the GPU does not hold yet.
pub fn fill_with_loaded(layout: &mut Layout, load: &[f64], slots: usize) {
    loop {
        let mut filled = false;
        for g in 0..layout.num_gpus() {
            if layout.used(g) >= slots {
                continue;
            }
            let mut best: Option<usize> = None;
            for e in 0..load.len() {
                if layout.holds(e, g) {
                    continue;
                }
                if best.is_none_or(|b| heavier(load, e, layout.replicas(e), b, layout.replicas(b)))
                {
                    best = Some(e);
                }
            }
            // slots <= E, so a GPU with a free slot lacks some expert.
            if let Some(e) = best {
                layout.add(e, g);
                filled = true;
            }
        }
        if !filled {
            break;
        }
    }
}

/// Replica counts: one each, then one more to the highest load per replica (at most G).
fn eplb_replicas(load: &[f64], num_gpus: usize, total: usize) -> Vec<usize> {
    let mut reps = vec![1usize; load.len()];
    for _ in load.len()..total {
        let mut best: Option<usize> = None;
        for e in 0..load.len() {
            if reps[e] < num_gpus && best.is_none_or(|b| heavier(load, e, reps[e], b, reps[b])) {
                best = Some(e);
            }
        }
        match best {
            Some(e) => reps[e] += 1,
            None => break,
        }
    }
    reps
}

pub fn eplb(load: &[f64], num_gpus: usize, slots: usize) -> Layout {
    let reps = eplb_replicas(load, num_gpus, num_gpus * slots);
    let mut items: Vec<(f64, usize)> = reps
        .iter()
        .enumerate()
        .flat_map(|(e, &r)| std::iter::repeat_n((load[e] / r as f64, e), r))
        .collect();
    items.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut layout = Layout::new(load.len(), num_gpus);
    let mut gpu_load = vec![0.0f64; num_gpus];
    for (w, e) in items {
        let lightest = (0..num_gpus)
            .filter(|&g| layout.used(g) < slots && !layout.holds(e, g))
            .min_by(|&a, &b| gpu_load[a].total_cmp(&gpu_load[b]).then(a.cmp(&b)));
        let g = match lightest {
            Some(g) => g,
            None => make_room(&mut layout, &mut gpu_load, load, &reps, e, slots),
        };
        layout.add(e, g);
        gpu_load[g] += w;
    }
    layout
}

/// Every GPU with a free slot already holds `expert`: move another expert from a full
/// GPU without `expert` to a GPU with a free slot, and return the freed GPU.
fn make_room(
    layout: &mut Layout,
    gpu_load: &mut [f64],
    load: &[f64],
    reps: &[usize],
    expert: usize,
    slots: usize,
) -> usize {
    let open = (0..layout.num_gpus())
        .find(|&g| layout.used(g) < slots)
        .expect("an item is left, so a slot is free");
    let full = (0..layout.num_gpus())
        .filter(|&g| !layout.holds(expert, g))
        .min_by(|&a, &b| gpu_load[a].total_cmp(&gpu_load[b]).then(a.cmp(&b)))
        .expect("the expert has fewer than G replicas placed");
    // `full` holds more experts than `open`, so one of them is missing on `open`.
    let mover = layout
        .experts_on(full)
        .iter()
        .map(|&x| x as usize)
        .find(|&x| !layout.holds(x, open))
        .expect("pigeonhole");
    let share = load[mover] / reps[mover] as f64;
    layout.remove(mover, full);
    layout.add(mover, open);
    gpu_load[full] -= share;
    gpu_load[open] += share;
    full
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_full(l: &Layout, slots: usize) {
        for g in 0..l.num_gpus() {
            assert_eq!(l.used(g), slots, "GPU {g}");
        }
        for e in 0..l.num_experts() {
            assert!(l.replicas(e) >= 1, "expert {e}");
        }
    }

    #[test]
    fn shapes() {
        let load: Vec<f64> = (0..10).map(|e| (10 - e) as f64).collect();
        let c = contiguous(&load, 4, 3);
        check_full(&c, 3);
        assert_eq!(c.experts_on(0)[..3], [0, 1, 2]);
        assert!(c.holds(3, 1) && c.holds(9, 3));
        let r = round_robin(&load, 4, 3);
        check_full(&r, 3);
        assert!(r.holds(5, 1) && r.holds(9, 1));
        // The two free slots go to the heaviest experts, on GPUs that lack them.
        assert_eq!(r.replicas(0), 2);
        assert_eq!(r.replicas(1), 2);
        let e = eplb(&load, 4, 3);
        check_full(&e, 3);
        assert_eq!(e.replicas(0), 2);
        assert_eq!(e.replicas(1), 2);
    }

    #[test]
    fn eplb_gives_replicas_by_load_per_replica() {
        let load = [100.0, 10.0, 10.0, 10.0];
        assert_eq!(eplb_replicas(&load, 4, 8), vec![4, 2, 1, 1]);
        let l = eplb(&load, 4, 2);
        check_full(&l, 2);
        assert_eq!(l.replicas(0), 4);
    }

    #[test]
    fn eplb_packs_when_slots_equal_experts() {
        let load = [5.0, 1.0, 1.0];
        let l = eplb(&load, 3, 3);
        check_full(&l, 3);
        assert!((0..3).all(|e| l.replicas(e) == 3));
    }
}
