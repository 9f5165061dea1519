//! The one owner of the semi-matching (docs/algorithms.md#semi-matching): each expert of a set goes to one GPU
//! holding a replica of it, minimizing the most experts on one GPU. That makespan is the
//! decode cost of a subset (docs/cost-model.md#one-token) and the rounds of a batch's union of experts.
//!
//! Experts are added one at a time while a matching of makespan t is kept; a new expert
//! either reaches a GPU below t by an alternating path or, when none exists, the optimum
//! of the experts so far is exactly t + 1 (it grows by at most one; Berge's theorem for
//! b-matchings). Two versions of that one algorithm:
//! - `cost_from_masks`: at most 16 experts whose GPUs are bits of 64-bit masks (GPU ids
//!   when G <= 64, else local ids from `LocalGpus`): the hot path of every subset cost;
//! - `SemiMatching`: any number of experts and GPUs (a batch's union of experts, or a
//!   row whose GPUs do not fit 64 local ids).

use crate::util::limits::MAX_K;

const NONE: u8 = u8::MAX;

/// Incremental semi-matching over at most 16 experts and 64 GPUs.
struct MaskMatching<'a> {
    masks: &'a [u64],
    assign: [u8; MAX_K],
    load: [u8; 64],
    /// Experts placed on each GPU, as bit masks over the subset's positions.
    on_gpu: [u16; 64],
    /// GPUs whose load equals `t`.
    full: u64,
    /// GPUs that serve anything (new experts prefer the others).
    used: u64,
    t: u8,
}

impl<'a> MaskMatching<'a> {
    fn new(masks: &'a [u64]) -> Self {
        MaskMatching {
            masks,
            assign: [NONE; MAX_K],
            load: [0; 64],
            on_gpu: [0; 64],
            full: 0,
            used: 0,
            t: 1,
        }
    }

    #[inline]
    fn place(&mut self, i: usize, g: u32) {
        self.assign[i] = g as u8;
        self.on_gpu[g as usize] |= 1 << i;
        self.load[g as usize] += 1;
        self.used |= 1 << g;
        if self.load[g as usize] == self.t {
            self.full |= 1 << g;
        }
    }

    /// Moves expert `j` from its GPU to `g` (which is below `t`).
    #[inline]
    fn shift(&mut self, j: usize, g: u32) {
        let from = self.assign[j] as usize;
        self.on_gpu[from] &= !(1u16 << j);
        self.load[from] -= 1;
        self.full &= !(1u64 << from);
        self.place(j, g);
    }

    /// Places expert `i` on a non-full GPU, moving others along an alternating path.
    /// A breadth-first search over GPU masks: GPU g is reached through expert via[g],
    /// which may move there; the experts on a reached GPU may move on.
    fn augment(&mut self, i: usize) -> bool {
        let mut via = [NONE; 64];
        let mut reached = 0u64;
        let mut frontier = self.masks[i];
        let mut seen_experts: u16 = 1 << i;
        // The GPUs first reached from expert i.
        let mut from_i = frontier;
        while from_i != 0 {
            via[from_i.trailing_zeros() as usize] = i as u8;
            from_i &= from_i - 1;
        }
        loop {
            let free = frontier & !self.full;
            if free != 0 {
                // Walk back: each expert moves to the GPU it reached, freeing its own.
                let mut g = free.trailing_zeros();
                loop {
                    let j = via[g as usize] as usize;
                    if j == i {
                        self.place(i, g);
                        return true;
                    }
                    let from = self.assign[j] as u32;
                    self.shift(j, g);
                    g = from;
                }
            }
            reached |= frontier;
            let mut experts: u16 = 0;
            let mut f = frontier;
            while f != 0 {
                experts |= self.on_gpu[f.trailing_zeros() as usize];
                f &= f - 1;
            }
            experts &= !seen_experts;
            if experts == 0 {
                return false;
            }
            seen_experts |= experts;
            let mut next = 0u64;
            while experts != 0 {
                let j = experts.trailing_zeros() as usize;
                experts &= experts - 1;
                let mut new = self.masks[j] & !reached & !next;
                next |= new;
                while new != 0 {
                    via[new.trailing_zeros() as usize] = j as u8;
                    new &= new - 1;
                }
            }
            if next == 0 {
                return false;
            }
            frontier = next;
        }
    }

    #[inline]
    fn add(&mut self, i: usize) {
        // Most experts find a free GPU at once: skip the path search for them.
        let free = self.masks[i] & !self.full;
        if free != 0 {
            let empty = free & !self.used;
            self.place(i, if empty != 0 { empty } else { free }.trailing_zeros());
            return;
        }
        if !self.augment(i) {
            // No matching of makespan t covers the experts so far: t + 1 does, and then
            // every GPU of expert i is below the new t.
            self.t += 1;
            self.full = 0;
            self.place(i, self.masks[i].trailing_zeros());
        }
    }
}

/// Cost of a subset given the GPU mask of each of its experts (at most 16 experts).
///
/// Rows of up to 8 experts (every decode row of the large models) take one pass without
/// branches or memory on the data: the single-replica experts are stacked on their GPUs
/// in bit planes (`one`, `two`, `three`: the GPUs holding at least that many of them).
/// The busiest GPU's count is a lower bound (`floor`), and exact for rows of singles
/// only; where the replicated experts each find a GPU below the floor in turn, the row
/// costs the floor, which is most rows of a good placement. Otherwise the bound
/// ceil(k / |union|) may raise the floor and the same test runs again, and what remains
/// (about one row in 30 on a greedy placement of 64 experts on 8 GPUs) takes the
/// matching, started at the floor. Deeper rows take `stacked_cost`.
pub fn cost_from_masks(masks: &[u64]) -> u32 {
    debug_assert!(masks.len() <= MAX_K && masks.iter().all(|&m| m != 0));
    let k = masks.len();
    if k > SHALLOW {
        return stacked_cost(masks);
    }
    let mut union = 0u64;
    let mut multi = 0u32;
    let (mut one, mut two, mut three, mut four) = (0u64, 0u64, 0u64, 0u64);
    // The GPUs of replicated experts, and those two or more of them hold.
    let (mut shared, mut contested) = (0u64, 0u64);
    for (i, &mask) in masks.iter().enumerate() {
        union |= mask;
        let replicated = mask & mask.wrapping_sub(1) != 0;
        multi |= u32::from(replicated) << i;
        let single = mask & u64::from(replicated).wrapping_sub(1);
        let spread = mask & !u64::from(replicated).wrapping_sub(1);
        contested |= shared & spread;
        shared |= spread;
        four |= three & single;
        three |= two & single;
        two |= one & single;
        one |= single;
    }
    if four != 0 {
        return stacked_cost(masks);
    }
    let most = if three != 0 {
        3
    } else if two != 0 {
        2
    } else {
        usize::from(one != 0)
    };
    if multi == 0 {
        return most as u32;
    }
    let mut floor = most.max(1);
    if fits_below(masks, multi, contested, floor, [one, two, three]) {
        return floor as u32;
    }
    // Only then the bound ceil(k / |union|) (a population count and a division): where
    // it is higher, the replicated experts may fit below it.
    let spread = union.count_ones() as usize;
    if spread < k && k.div_ceil(spread) > floor {
        floor = k.div_ceil(spread);
        if floor > 3 {
            return stacked_cost(masks);
        }
        if fits_below(masks, multi, contested, floor, [one, two, three]) {
            return floor as u32;
        }
    }
    matching_from(masks, floor, multi)
}

/// The exact cost of each row of `rows` (`k` expert ids per row, `masks[e]` the GPUs of
/// expert e) into `out`, equal to `cost_from_masks` of each row's masks.
///
/// Rows of up to 8 experts first take a quick test with one loop per row length (no
/// call, no length test per row): `nibble_floor` on at most 16 GPUs, `settled_floor`
/// on more. Each expert's GPUs are split once, before the rows, into its single GPU or its
/// replicas, so the rows read one pair per expert and never test the masks. The rows
/// the test cannot settle (about one in 25 on a greedy placement of 64 experts on
/// 8 GPUs) take `cost_from_masks`.
pub fn row_costs(masks: &[u64], rows: &[u16], k: usize, out: &mut [u32]) {
    debug_assert_eq!(rows.len(), out.len() * k);
    let row_masks = |row: &[u16]| {
        let mut m = [0u64; MAX_K];
        for (m, &e) in m.iter_mut().zip(row) {
            *m = masks[e as usize];
        }
        cost_from_masks(&m[..k])
    };
    if k == 0 || k > SHALLOW {
        for (c, row) in out.iter_mut().zip(rows.chunks_exact(k.max(1))) {
            *c = row_masks(row);
        }
        return;
    }
    // On at most 16 GPUs each GPU has a 4-bit counter of a 64-bit word (`nibble_floor`).
    let nibbles = masks.iter().all(|&m| m < 1 << 16);
    let split = split_masks(masks, nibbles);
    fn settle<const K: usize, const NIBBLES: bool>(
        split: &[[u64; 2]],
        rows: &[u16],
        out: &mut [u32],
        rest: impl Fn(&[u16]) -> u32,
    ) {
        for (c, row) in out.iter_mut().zip(rows.chunks_exact(K)) {
            let row: &[u16; K] = row.try_into().expect("a row of K experts");
            let floor = if NIBBLES {
                nibble_floor(split, row)
            } else {
                settled_floor(split, row)
            };
            *c = if floor != 0 { floor } else { rest(row) };
        }
    }
    macro_rules! by_length {
        ($nibbles:literal) => {
            match k {
                1 => settle::<1, $nibbles>(&split, rows, out, row_masks),
                2 => settle::<2, $nibbles>(&split, rows, out, row_masks),
                3 => settle::<3, $nibbles>(&split, rows, out, row_masks),
                4 => settle::<4, $nibbles>(&split, rows, out, row_masks),
                5 => settle::<5, $nibbles>(&split, rows, out, row_masks),
                6 => settle::<6, $nibbles>(&split, rows, out, row_masks),
                7 => settle::<7, $nibbles>(&split, rows, out, row_masks),
                _ => settle::<8, $nibbles>(&split, rows, out, row_masks),
            }
        };
    }
    if nibbles {
        by_length!(true)
    } else {
        by_length!(false)
    }
}

/// Each expert's GPUs as [single, spread]: its mask in the first when it has one replica,
/// else in the second; with `nibbles` (masks below 2^16), the first a count of one on its
/// GPU's counter, the second the top bits of its GPUs' counters (`nibble_floor`).
fn split_masks(masks: &[u64], nibbles: bool) -> Vec<[u64; 2]> {
    masks
        .iter()
        .map(|&m| match (m & m.wrapping_sub(1) == 0, nibbles) {
            (true, false) => [m, 0],
            (false, false) => [0, m],
            (true, true) => [1 << (4 * m.trailing_zeros()), 0],
            (false, true) => [0, spread_nibbles(m)],
        })
        .collect()
}

/// 1 in the lowest bit of each of 16 4-bit counters.
const NIBBLE_ONES: u64 = 0x1111_1111_1111_1111;
/// The top bit of each counter: set in `count + (8 - t) * NIBBLE_ONES` where the count
/// is at least t (counts and t up to 8, so no counter carries into the next).
const NIBBLE_TOPS: u64 = NIBBLE_ONES << 3;

/// A mask of at most 16 GPUs as the top bits of their counters.
fn spread_nibbles(mask: u64) -> u64 {
    (0..16)
        .filter(|g| mask >> g & 1 == 1)
        .fold(0, |acc, g| acc | 8 << (4 * g))
}

/// `settled_floor` on at most 16 GPUs: the singles add one to their GPU's 4-bit counter
/// of one word (one addition per expert where the planes take seven operations), and the
/// GPUs holding at least t experts are the top bits of the counters plus 8 - t.
#[inline(always)]
fn nibble_floor<const K: usize>(split: &[[u64; 2]], row: &[u16; K]) -> u32 {
    let mut counts = 0u64;
    let (mut shared, mut contested) = (0u64, 0u64);
    let mut replicated = [0u64; K];
    let mut count = 0;
    for &e in row {
        let [single, spread] = split[e as usize];
        counts += single;
        contested |= shared & spread;
        shared |= spread;
        replicated[count % K] = spread;
        count += usize::from(spread != 0);
    }
    let at_least = |counts: u64, t: u64| counts.wrapping_add((8 - t) * NIBBLE_ONES) & NIBBLE_TOPS;
    let mut one = at_least(counts, 1);
    let most = u32::from(one != 0)
        + u32::from(at_least(counts, 2) != 0)
        + u32::from(at_least(counts, 3) != 0);
    // The GPUs of the row counted in bytes (two counters' top bits each), then summed.
    let union = (one | shared) >> 3;
    let pairs = (union + (union >> 4)) & 0x0F0F_0F0F_0F0F_0F0F;
    let (k, n) = (
        K as u32,
        (pairs.wrapping_mul(0x0101_0101_0101_0101) >> 56) as u32,
    );
    let by_union = 1 + u32::from(n < k) + u32::from(2 * n < k) + u32::from(3 * n < k);
    let floor = most.max(by_union);
    let mut stuck = at_least(counts, 4) != 0 || floor > 3;
    let lift = (8 - u64::from(floor.min(4))) * NIBBLE_ONES;
    let mut full = counts.wrapping_add(lift) & NIBBLE_TOPS;
    for &spread in &replicated[..count] {
        let free = spread & !full;
        stuck |= free == 0;
        let gpu = pick_gpu(free, one, contested);
        counts += gpu >> 3;
        one |= gpu;
        full = counts.wrapping_add(lift) & NIBBLE_TOPS;
    }
    if stuck {
        0
    } else {
        floor
    }
}

/// The GPU (a one-bit mask) a replicated expert of a row takes among its `free` ones
/// (`fits_below`'s choice): one no expert of the row holds and no other replicated expert
/// can use, else one no expert holds, else the lowest free one.
#[inline(always)]
fn pick_gpu(free: u64, one: u64, contested: u64) -> u64 {
    let empty = free & !one;
    let own = empty & !contested;
    let pick = if own != 0 {
        own
    } else if empty != 0 {
        empty
    } else {
        free
    };
    pick & pick.wrapping_neg()
}

/// The cost of a row of up to 8 experts where a quick test proves it, else 0. The
/// singles stacked in bit planes give the busiest GPU's count, the row's GPUs the bound
/// ceil(k / |union|); their maximum is the floor, and where the replicated experts
/// (gathered in a first pass without branches) each find a GPU below it in turn
/// (`fits_below`'s choices), the row costs the floor.
#[inline(always)]
fn settled_floor<const K: usize>(split: &[[u64; 2]], row: &[u16; K]) -> u32 {
    let (mut one, mut two, mut three, mut four) = (0u64, 0u64, 0u64, 0u64);
    // The GPUs of replicated experts, and those two or more of them hold.
    let (mut shared, mut contested) = (0u64, 0u64);
    // The masks of the replicated experts, in order.
    let mut replicated = [0u64; K];
    let mut count = 0;
    for &e in row {
        let [single, spread] = split[e as usize];
        four |= three & single;
        three |= two & single;
        two |= one & single;
        one |= single;
        contested |= shared & spread;
        shared |= spread;
        // Written always, kept when replicated (`count` stays below K).
        replicated[count % K] = spread;
        count += usize::from(spread != 0);
    }
    let most = u32::from(one != 0) + u32::from(two != 0) + u32::from(three != 0);
    // ceil(k / n) for n GPUs in the union, from 1 to 4 (4 or more: not settled here).
    let (k, n) = (K as u32, (one | shared).count_ones());
    let by_union = 1 + u32::from(n < k) + u32::from(2 * n < k) + u32::from(3 * n < k);
    let floor = most.max(by_union);
    // The plane that marks the GPUs at the floor: all ones where it is chosen.
    let at = |plane: u32| u64::from(floor == plane).wrapping_neg();
    let (at1, at2, at3) = (at(1), at(2), at(3));
    let mut stuck = four != 0 || floor > 3;
    for &spread in &replicated[..count] {
        let free = spread & !(one & at1 | two & at2 | three & at3);
        stuck |= free == 0;
        let gpu = pick_gpu(free, one, contested);
        three |= two & gpu;
        two |= one & gpu;
        one |= gpu;
    }
    if stuck {
        0
    } else {
        floor
    }
}

/// Whether the replicated experts (`multi`) fit in turn, each on a GPU holding fewer than
/// `floor` experts (an empty one first, one no other replicated expert holds, the
/// `contested` GPUs, if any), on top of the singles stacked in `at_least` (`at_least[j]`:
/// the GPUs holding more than j singles). A failure proves nothing.
#[inline]
fn fits_below(
    masks: &[u64],
    mut multi: u32,
    contested: u64,
    floor: usize,
    at_least: [u64; 3],
) -> bool {
    let [mut one, mut two, mut three] = at_least;
    // The GPUs holding `floor` experts: no other expert may go there.
    let full_at = |one: u64, two: u64, three: u64| match floor {
        1 => one,
        2 => two,
        _ => three,
    };
    let mut full = full_at(one, two, three);
    while multi != 0 {
        let free = masks[multi.trailing_zeros() as usize] & !full;
        multi &= multi - 1;
        if free == 0 {
            return false;
        }
        let gpu = pick_gpu(free, one, contested);
        three |= two & gpu;
        two |= one & gpu;
        one |= gpu;
        full = full_at(one, two, three);
    }
    true
}

/// Rows of more than `SHALLOW` experts take `stacked_cost`.
const SHALLOW: usize = 8;

/// `cost_from_masks` for any row: the single-replica experts counted per GPU in memory
/// (their busiest GPU and ceil(k / |union|) bound the cost from below), then the same
/// test of the replicated experts below that bound, else the matching started at it.
fn stacked_cost(masks: &[u64]) -> u32 {
    let k = masks.len();
    let mut union = 0u64;
    let mut count = [0u8; 64];
    let mut most = 0u8;
    // The GPUs whose count of singles is `most`.
    let mut busiest = 0u64;
    let mut multi = 0u32;
    let mut single_gpus = 0u64;
    for (i, &mask) in masks.iter().enumerate() {
        union |= mask;
        let replicated = mask & mask.wrapping_sub(1) != 0;
        multi |= u32::from(replicated) << i;
        let single = mask & u64::from(replicated).wrapping_sub(1);
        single_gpus |= single;
        // A replicated expert adds nothing (its lowest GPU's count is read, unchanged).
        let c = &mut count[(mask.trailing_zeros() & 63) as usize];
        *c += u8::from(!replicated);
        busiest = if *c > most {
            single
        } else if *c == most {
            busiest | single
        } else {
            busiest
        };
        most = most.max(*c);
    }
    if multi == 0 {
        return most as u32;
    }
    let most = most as usize;
    // ceil(k / |union|), without a division where the union spans k GPUs or more.
    let spread = union.count_ones() as usize;
    let floor = if spread >= k {
        most.max(1)
    } else {
        most.max(k.div_ceil(spread))
    };
    // Most rows cost exactly `floor`: replicated experts that each find a GPU below it in
    // turn (an empty one first) prove it without the matching's buffers (a failure
    // proves nothing).
    let mut full = if most == floor { busiest } else { 0 };
    let mut used = single_gpus;
    let mut rest = multi;
    let fits = loop {
        if rest == 0 {
            break true;
        }
        let free = masks[rest.trailing_zeros() as usize] & !full;
        rest &= rest - 1;
        if free == 0 {
            break false;
        }
        let empty = free & !used;
        let g = if empty != 0 { empty } else { free }.trailing_zeros();
        used |= 1 << g;
        count[g as usize] += 1;
        full |= u64::from(count[g as usize] as usize >= floor) << g;
    };
    if fits {
        return floor as u32;
    }
    // Deep rows (more than 8 experts) over GPU ids below 6 (placements on few GPUs): Hall's
    // formula over GPU sets is cheaper than the matching's paths there, not on short rows.
    if k > 8 && union < 1 << FEW_GPUS {
        return few_gpus_cost(masks);
    }
    matching_from(masks, floor, multi)
}

/// The cost of a row that costs at least `floor`, `multi` the bits of its replicated
/// experts: a matching of makespan `floor` holds the singles (no GPU has more of them),
/// and each replicated expert either extends it or raises the optimum by one.
fn matching_from(masks: &[u64], floor: usize, mut multi: u32) -> u32 {
    let mut m = MaskMatching::new(masks);
    m.t = floor as u8;
    let mut singles = ((1u32 << masks.len()) - 1) & !multi;
    while singles != 0 {
        let i = singles.trailing_zeros() as usize;
        singles &= singles - 1;
        m.place(i, masks[i].trailing_zeros());
    }
    while multi != 0 {
        let i = multi.trailing_zeros() as usize;
        multi &= multi - 1;
        m.add(i);
    }
    m.t as u32
}

/// GPU ids below this take `few_gpus_cost`.
const FEW_GPUS: u32 = 6;

/// Hall's formula over GPU sets: the cost is the largest ceil(|X(Y)| / |Y|) over sets Y
/// of GPUs, X(Y) the experts all of whose replicas are in Y (for any expert set X,
/// Y = N(X) has X in X(Y); and X(Y) needs at least that many rounds on Y). |X(Y)| for
/// every Y is a sum over subsets (zeta transform) of the count of each mask: 2^6 * 6
/// additions at most, whatever the number of experts. Masks must be below 2^FEW_GPUS.
fn few_gpus_cost(masks: &[u64]) -> u32 {
    let union = masks.iter().fold(0u64, |a, &m| a | m);
    let bits = 64 - union.leading_zeros();
    let size = 1usize << bits;
    let mut inside = [0u8; 1 << FEW_GPUS];
    for &m in masks {
        inside[m as usize] += 1;
    }
    for b in 0..bits {
        for y in 0..size {
            if y >> b & 1 == 1 {
                inside[y] += inside[y ^ (1 << b)];
            }
        }
    }
    let mut t = 0u32;
    for (y, &n) in inside[..size].iter().enumerate().skip(1) {
        let gpus = (y as u32).count_ones();
        while n as u32 > t * gpus {
            t += 1;
        }
    }
    t
}

/// Which single new replica lowers the cost `t` of a subset by one (docs/algorithms.md#semi-matching), found by
/// alternating paths instead of the 2^k loop over violating sets: a matching with each GPU
/// capped at t - 1 rounds leaves one expert u unserved (else no replica helps); a new
/// replica (i, g) completes it iff i is reachable from u by an alternating path (the
/// experts of every violating set) and g reaches spare capacity by one (g "absorbs").
/// Returns (the reachable experts as bits over the subset, the GPUs that do not absorb
/// as bits of the masks' space), i.e. the replica (i, g) helps iff i is in the first
/// and g outside the second; None if no replica helps. A few hundred nanoseconds at
/// k = 16, where the 2^k loop reads 65,536 sets.
pub fn single_replica_gain(masks: &[u64], t: u32) -> Option<(u16, u64)> {
    if t < 2 || masks.is_empty() {
        return None;
    }
    let mut m = MaskMatching::new(masks);
    m.t = (t - 1) as u8;
    let mut unserved = None;
    for (i, &mask) in masks.iter().enumerate() {
        let free = mask & !m.full;
        if free != 0 {
            m.place(i, free.trailing_zeros());
        } else if !m.augment(i) {
            if unserved.is_some() {
                return None;
            }
            unserved = Some(i);
        }
    }
    // A cost of t means no t - 1 matching serves everyone.
    let u = unserved?;
    // Experts reachable from u: every GPU they reach is full (no augmenting path).
    let mut experts: u16 = 1 << u;
    let mut reached = masks[u];
    loop {
        let mut more = experts;
        let mut f = reached;
        while f != 0 {
            more |= m.on_gpu[f.trailing_zeros() as usize];
            f &= f - 1;
        }
        if more == experts {
            break;
        }
        experts = more;
        let mut e = experts;
        while e != 0 {
            reached |= masks[e.trailing_zeros() as usize];
            e &= e - 1;
        }
    }
    // GPUs that absorb: below t - 1, or holding an expert that can move to one that absorbs.
    let union = masks.iter().fold(0u64, |a, &b| a | b);
    let mut absorb = union & !m.full;
    loop {
        let mut grown = absorb;
        let mut f = union & !absorb;
        while f != 0 {
            let g = f.trailing_zeros() as usize;
            f &= f - 1;
            let mut on = m.on_gpu[g];
            while on != 0 {
                let j = on.trailing_zeros() as usize;
                on &= on - 1;
                if masks[j] & absorb & !(1u64 << g) != 0 {
                    grown |= 1 << g;
                    break;
                }
            }
        }
        if grown == absorb {
            break;
        }
        absorb = grown;
    }
    Some((experts, union & !absorb))
}

/// Hall's formula (docs/algorithms.md#semi-matching): max over nonempty X of ceil(|X| / |N(X)|), by a 2^k loop.
/// Slower than the matching: the tests' independent check.
#[cfg(test)]
pub(crate) fn hall_cost(masks: &[u64]) -> u32 {
    let k = masks.len();
    let mut union = vec![0u64; 1 << k];
    let mut best = 0;
    for x in 1usize..1 << k {
        let low = x.trailing_zeros() as usize;
        union[x] = union[x & (x - 1)] | masks[low];
        let need = (x.count_ones()).div_ceil(union[x].count_ones());
        best = best.max(need);
    }
    best
}

/// Numbers the GPUs of one row (or batch) locally, in order of first appearance, so that
/// a row over more than 64 GPUs in all still fits 64-bit masks when it touches at most
/// 64 of them. Sized for placements over more than 64 GPUs; unused below.
pub struct LocalGpus {
    local: Vec<u16>,
    /// The GPU each local bit stands for.
    pub gpus: Vec<u16>,
}

impl LocalGpus {
    pub fn new(num_gpus: usize) -> Self {
        LocalGpus {
            local: if num_gpus > 64 {
                vec![u16::MAX; num_gpus]
            } else {
                Vec::new()
            },
            gpus: Vec::new(),
        }
    }

    /// Forgets the numbering, for the next row.
    pub fn clear(&mut self) {
        for &g in &self.gpus {
            self.local[g as usize] = u16::MAX;
        }
        self.gpus.clear();
    }

    /// The local bit of GPU `g`, numbering it if new; None once 64 GPUs are numbered.
    pub fn bit(&mut self, g: u16) -> Option<u32> {
        let id = self.local[g as usize];
        if id != u16::MAX {
            return Some(id as u32);
        }
        if self.gpus.len() == 64 {
            return None;
        }
        self.local[g as usize] = self.gpus.len() as u16;
        self.gpus.push(g);
        Some(self.gpus.len() as u32 - 1)
    }
}

/// Per-thread buffers for the cost of rows over any number of GPUs: local numbering for
/// the mask path, and the general matching (made on first use) for rows that do not fit.
pub struct RowScratch {
    pub local: LocalGpus,
    num_gpus: usize,
    general: Option<SemiMatching>,
}

impl RowScratch {
    pub fn new(num_gpus: usize) -> Self {
        RowScratch {
            local: LocalGpus::new(num_gpus),
            num_gpus,
            general: None,
        }
    }

    /// The makespan of `n` experts held by `gpus_of(i)`, by the general matching.
    pub fn general_cost<'a>(&mut self, n: usize, gpus_of: impl Fn(usize) -> &'a [u16]) -> u32 {
        let num_gpus = self.num_gpus;
        self.general
            .get_or_insert_with(|| SemiMatching::new(num_gpus))
            .solve(n, gpus_of)
    }
}

const ROOT: u32 = u32::MAX;

/// Optimal semi-matching for any number of experts and GPUs: per-GPU lists and
/// breadth-first alternating paths, with reusable buffers over `num_gpus` GPUs.
pub struct SemiMatching {
    load: Vec<u32>,
    on_gpu: Vec<Vec<u32>>,
    /// GPU of each (local) expert after `solve`.
    pub assign: Vec<u16>,
    parent: Vec<(u32, u32)>,
    seen: Vec<u32>,
    stamp: u32,
    queue: Vec<u16>,
    touched: Vec<u16>,
    order: Vec<u32>,
}

impl SemiMatching {
    pub fn new(num_gpus: usize) -> Self {
        SemiMatching {
            load: vec![0; num_gpus],
            on_gpu: vec![Vec::new(); num_gpus],
            assign: Vec::new(),
            parent: vec![(ROOT, 0); num_gpus],
            seen: vec![0; num_gpus],
            stamp: 0,
            queue: Vec::new(),
            touched: Vec::new(),
            order: Vec::new(),
        }
    }

    fn next_stamp(&mut self) -> u32 {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.seen.iter_mut().for_each(|s| *s = 0);
            self.stamp = 1;
        }
        self.stamp
    }

    /// Makespan (experts on the busiest GPU) of an optimal semi-matching of `n` experts,
    /// expert i held by the GPUs `gpus_of(i)` (at least one); `assign[i]` is then the GPU
    /// of expert i.
    pub fn solve<'a>(&mut self, n: usize, gpus_of: impl Fn(usize) -> &'a [u16]) -> u32 {
        for &g in &self.touched {
            self.load[g as usize] = 0;
            self.on_gpu[g as usize].clear();
        }
        self.touched.clear();
        self.assign.clear();
        self.assign.resize(n, u16::MAX);
        if n == 0 {
            return 0;
        }
        // |N(U)| gives the Hall bound ceil(|U| / |N(U)|) to start from: fewer failed searches.
        let stamp = self.next_stamp();
        for i in 0..n {
            for &g in gpus_of(i) {
                if self.seen[g as usize] != stamp {
                    self.seen[g as usize] = stamp;
                    self.touched.push(g);
                }
            }
        }
        let mut t = (n as u32).div_ceil(self.touched.len() as u32).max(1);
        // Experts with fewer replicas first: they have the fewest choices.
        let mut order = std::mem::take(&mut self.order);
        order.clear();
        order.extend(0..n as u32);
        order.sort_by_key(|&i| gpus_of(i as usize).len());
        for &i in &order {
            if !self.augment(i, &gpus_of, t) {
                t += 1;
                let gpus = gpus_of(i as usize);
                let g = *gpus.iter().min_by_key(|&&g| self.load[g as usize]).unwrap();
                self.put(i, g);
            }
        }
        self.order = order;
        t
    }

    fn put(&mut self, i: u32, g: u16) {
        self.assign[i as usize] = g;
        self.load[g as usize] += 1;
        self.on_gpu[g as usize].push(i);
    }

    fn augment<'a>(&mut self, i: u32, gpus_of: &impl Fn(usize) -> &'a [u16], t: u32) -> bool {
        let stamp = self.next_stamp();
        self.queue.clear();
        for &g in gpus_of(i as usize) {
            if self.seen[g as usize] == stamp {
                continue;
            }
            self.seen[g as usize] = stamp;
            self.parent[g as usize] = (ROOT, i);
            if self.load[g as usize] < t {
                self.apply(g);
                return true;
            }
            self.queue.push(g);
        }
        let mut head = 0;
        while head < self.queue.len() {
            let g = self.queue[head];
            head += 1;
            for idx in 0..self.on_gpu[g as usize].len() {
                let j = self.on_gpu[g as usize][idx];
                for &h in gpus_of(j as usize) {
                    if self.seen[h as usize] == stamp {
                        continue;
                    }
                    self.seen[h as usize] = stamp;
                    self.parent[h as usize] = (g as u32, j);
                    if self.load[h as usize] < t {
                        self.apply(h);
                        return true;
                    }
                    self.queue.push(h);
                }
            }
        }
        false
    }

    /// Shifts every expert along the path that ends at `end` (a GPU below t).
    fn apply(&mut self, end: u16) {
        self.load[end as usize] += 1;
        let mut cur = end;
        loop {
            let (prev, j) = self.parent[cur as usize];
            if prev == ROOT {
                self.assign[j as usize] = cur;
                self.on_gpu[cur as usize].push(j);
                return;
            }
            let list = &mut self.on_gpu[prev as usize];
            let pos = list
                .iter()
                .position(|&x| x == j)
                .expect("expert on its GPU");
            list.swap_remove(pos);
            self.on_gpu[cur as usize].push(j);
            self.assign[j as usize] = cur;
            cur = prev as u16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    fn random_masks(rng: &mut SmallRng, k: usize, g: usize, max_reps: usize) -> Vec<u64> {
        (0..k)
            .map(|_| {
                let reps = rng.random_range(1..=max_reps.min(g));
                let mut m = 0u64;
                while (m.count_ones() as usize) < reps {
                    m |= 1 << rng.random_range(0..g);
                }
                m
            })
            .collect()
    }

    fn lists_of(masks: &[u64]) -> Vec<Vec<u16>> {
        masks
            .iter()
            .map(|&m| (0..64).filter(|g| m >> g & 1 == 1).collect())
            .collect()
    }

    #[test]
    fn mask_matching_equals_hall_formula() {
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let k = rng.random_range(1..=10);
            let g = rng.random_range(1..=12);
            let masks = random_masks(&mut rng, k, g, 3);
            assert_eq!(cost_from_masks(&masks), hall_cost(&masks), "{masks:?}");
        }
    }

    /// Rows on GPU ids below 6 take Hall's formula over GPU sets; deep rows (k up to 16
    /// on few GPUs, replicas) equal the formula over expert sets.
    #[test]
    fn few_gpus_cost_equals_hall_formula() {
        let mut rng = SmallRng::seed_from_u64(11);
        let mut deep = 0;
        for _ in 0..4000 {
            let k = rng.random_range(1..=16);
            let g = rng.random_range(1..=7);
            let masks = random_masks(&mut rng, k, g, 3);
            let t = hall_cost(&masks);
            assert_eq!(cost_from_masks(&masks), t, "{masks:?}");
            if masks.iter().all(|&m| m < 1 << FEW_GPUS) {
                assert_eq!(few_gpus_cost(&masks), t, "{masks:?}");
                deep += usize::from(t >= 3);
            }
        }
        assert!(deep > 200, "{deep} rows of 3 rounds or more");
    }

    /// Placements like the greedy's: most experts on one GPU, a few replicated; rows of
    /// every depth over up to 64 GPUs (stacks of singles, floors from the union, rows the
    /// quick test cannot prove), against Hall's formula.
    #[test]
    fn mostly_single_rows_equal_hall_formula() {
        let mut rng = SmallRng::seed_from_u64(5);
        let mut above_floor = 0;
        for _ in 0..10_000 {
            let k = rng.random_range(1..=10);
            let g = [2, 3, 5, 8, 16, 64][rng.random_range(0..6)];
            let masks: Vec<u64> = (0..k)
                .map(|_| {
                    let reps = if rng.random_bool(0.7) { 1 } else { 3 };
                    random_masks(&mut rng, 1, g, reps)[0]
                })
                .collect();
            let t = hall_cost(&masks);
            assert_eq!(cost_from_masks(&masks), t, "{masks:?}");
            assert_eq!(stacked_cost(&masks), t, "{masks:?}");
            let most = (0..64)
                .map(|b| masks.iter().filter(|&&m| m == 1 << b).count() as u32)
                .max()
                .unwrap_or(0);
            above_floor += usize::from(t > most.max(1) && masks.iter().any(|m| m.count_ones() > 1));
        }
        assert!(
            above_floor > 500,
            "{above_floor} rows above the singles' floor"
        );
    }

    /// `row_costs` equals `cost_from_masks` row by row and Hall's formula, for rows of 1
    /// to 10 experts over 2 to 64 GPUs (counters on at most 16 GPUs, bit planes above),
    /// and each quick test is right where it settles a row and leaves some rows to the
    /// matching.
    #[test]
    fn row_costs_equal_cost_from_masks_and_hall() {
        let mut rng = SmallRng::seed_from_u64(13);
        let (mut settled, mut left) = ([0; 2], [0; 2]);
        for case in 0..240 {
            let g = [2, 3, 8, 15, 16, 17, 32, 64][case % 8];
            let k = 1 + case / 8 % 10;
            let experts = 24;
            let masks: Vec<u64> = (0..experts)
                .map(|_| {
                    let reps = if rng.random_bool(0.7) {
                        1
                    } else {
                        2 + case % 3
                    };
                    random_masks(&mut rng, 1, g, reps)[0]
                })
                .collect();
            let mut rows = Vec::new();
            for _ in 0..100 {
                let mut row: Vec<u16> = Vec::new();
                while row.len() < k {
                    let e = rng.random_range(0..experts) as u16;
                    if !row.contains(&e) {
                        row.push(e);
                    }
                }
                rows.extend(row);
            }
            let mut costs = vec![0; 100];
            row_costs(&masks, &rows, k, &mut costs);
            // The planes take any row; the counters rows over at most 16 GPUs.
            let split = [split_masks(&masks, false), split_masks(&masks, g <= 16)];
            for (row, &cost) in rows.chunks_exact(k).zip(&costs) {
                let row_masks: Vec<u64> = row.iter().map(|&e| masks[e as usize]).collect();
                assert_eq!(cost, cost_from_masks(&row_masks), "{row_masks:?}");
                assert_eq!(cost, hall_cost(&row_masks), "{row_masks:?}");
                if k == 6 {
                    let row: &[u16; 6] = row.try_into().unwrap();
                    let mut quick = vec![settled_floor(&split[0], row)];
                    if g <= 16 {
                        quick.push(nibble_floor(&split[1], row));
                    }
                    for (test, &floor) in quick.iter().enumerate() {
                        assert!(floor == 0 || floor == cost, "{test}: {row_masks:?}");
                        settled[test] += usize::from(floor != 0);
                        left[test] += usize::from(floor == 0);
                    }
                }
            }
        }
        assert!(settled.iter().all(|&n| n > 100), "settled {settled:?}");
        assert!(
            left.iter().all(|&n| n > 10),
            "left to the matching {left:?}"
        );
        // Eight experts with two replicas each over all 16 GPUs (the row's union counted
        // to 16) run in one round.
        let masks: Vec<u64> = (0..8).map(|i| 0b11 << (2 * i)).collect();
        let mut cost = [0];
        row_costs(&masks, &[0, 1, 2, 3, 4, 5, 6, 7], 8, &mut cost);
        assert_eq!(cost, [1]);
    }

    #[test]
    fn known_costs() {
        // Three experts on one GPU run in three rounds.
        assert_eq!(cost_from_masks(&[1, 1, 1]), 3);
        // Two on GPU 0, one replicated: the replica takes the load.
        assert_eq!(cost_from_masks(&[0b01, 0b01, 0b11]), 2);
        assert_eq!(cost_from_masks(&[0b01, 0b11]), 1);
        // An alternating path is needed: 0 takes GPU 0 first, 1 can only use GPU 0.
        assert_eq!(cost_from_masks(&[0b11, 0b01]), 1);
        assert_eq!(cost_from_masks(&[]), 0);
        // Four singles on GPU 0 (the stacked path); three experts on two GPUs.
        assert_eq!(cost_from_masks(&[1, 1, 1, 1, 0b10]), 4);
        assert_eq!(cost_from_masks(&[1, 0b11, 0b10]), 2);
        assert_eq!(cost_from_masks(&[0b11, 0b110, 1, 0b100]), 2);
        assert_eq!(cost_from_masks(&[0b11, 0b110, 1, 0b1000]), 1);
        // The union bound: six experts on three GPUs.
        assert_eq!(
            cost_from_masks(&[0b011, 0b110, 0b101, 0b011, 0b110, 0b101]),
            2
        );
    }

    #[test]
    fn general_matching_equals_mask_matching_and_hall() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut sm = SemiMatching::new(64);
        for _ in 0..5000 {
            let k = rng.random_range(0..=14);
            let g = rng.random_range(1..=12);
            let masks = random_masks(&mut rng, k, g, 4);
            let lists = lists_of(&masks);
            let t = sm.solve(lists.len(), |i| &lists[i]);
            assert_eq!(t, cost_from_masks(&masks));
            assert_eq!(t, hall_cost(&masks));
            // The reported assignment is a matching of that makespan.
            let mut load = vec![0u32; g];
            for (i, l) in lists.iter().enumerate() {
                assert!(l.contains(&sm.assign[i]));
                load[sm.assign[i] as usize] += 1;
            }
            assert_eq!(load.iter().copied().max().unwrap_or(0), t);
        }
    }

    #[test]
    fn general_matching_handles_many_experts() {
        // 256 experts on 32 GPUs, two replicas each: the union of a large batch.
        let lists: Vec<Vec<u16>> = (0..256u16)
            .map(|e| vec![e % 32, (e * 7 + 3) % 32])
            .collect();
        let mut sm = SemiMatching::new(32);
        assert_eq!(sm.solve(256, |i| &lists[i]), 8);
        // Experts 0, 32, ..., 224 all live on GPUs 0 and 3.
        let some: Vec<&[u16]> = (0..8).map(|i| &lists[i * 32][..]).collect();
        assert_eq!(sm.solve(8, |i| some[i]), 4);
    }

    #[test]
    fn local_numbering_fits_wide_rows_in_masks() {
        let mut local = LocalGpus::new(200);
        assert_eq!(local.bit(150), Some(0));
        assert_eq!(local.bit(3), Some(1));
        assert_eq!(local.bit(150), Some(0));
        assert_eq!(local.gpus, vec![150, 3]);
        local.clear();
        assert_eq!(local.bit(3), Some(0));
        for g in 100..163 {
            assert!(local.bit(g).is_some());
        }
        assert_eq!(local.bit(199), None);
    }
}
