//! Subset tables: how often each set of co-activated experts occurs in one layer.
//!
//! A row is one distinct subset (ids ascending); rows are ordered by weight
//! descending, ties by the ids, so every table built from the same input is identical
//! whatever the number of threads.

use rayon::prelude::*;

use crate::util::error::{MoeError, Result};
use crate::util::limits::{MAX_EXPERTS, MAX_K};

/// Rows per parallel task: work per row is tens of nanoseconds, so tasks must be large.
const ROWS_PER_TASK: usize = 16_384;

#[derive(Debug, Clone, PartialEq)]
pub struct SubsetTable {
    num_experts: usize,
    k: usize,
    /// Row-major [len, k], ids ascending within a row.
    subsets: Vec<u16>,
    weights: Vec<f64>,
    /// Weight of the table this one was pruned from (equal to `total_weight` if unpruned).
    original_weight: f64,
}

/// The inverse index: for each expert, the rows of the table that contain it.
#[derive(Debug, Clone)]
pub struct ExpertIndex {
    pub offsets: Vec<usize>,
    pub rows: Vec<u32>,
}

impl ExpertIndex {
    pub fn rows_of(&self, expert: usize) -> &[u32] {
        &self.rows[self.offsets[expert]..self.offsets[expert + 1]]
    }
}

fn check_shape(num_experts: usize, k: usize) -> Result<()> {
    if num_experts == 0 || num_experts > MAX_EXPERTS {
        return Err(MoeError::value(format!(
            "num_experts must be in [1, {MAX_EXPERTS}], got {num_experts}"
        )));
    }
    if k == 0 || k > MAX_K {
        return Err(MoeError::value(format!(
            "k (experts per token) must be in [1, {MAX_K}], got {k}"
        )));
    }
    if k > num_experts {
        return Err(MoeError::value(format!(
            "k = {k} experts per token is more than num_experts = {num_experts}"
        )));
    }
    Ok(())
}

fn check_weights(weights: Option<&[f64]>, rows: usize, what: &str) -> Result<()> {
    let Some(w) = weights else { return Ok(()) };
    if w.len() != rows {
        return Err(MoeError::value(format!(
            "weights has {} entries but {what} has {rows} rows",
            w.len()
        )));
    }
    if let Some((i, x)) = w
        .iter()
        .enumerate()
        .find(|(_, x)| !(x.is_finite() && **x >= 0.0))
    {
        return Err(MoeError::value(format!(
            "weights[{i}] = {x}: weights must be finite and non-negative"
        )));
    }
    // Finite weights can still sum to infinity, and every expected cost would be inf/inf = NaN.
    let total: f64 = w.iter().sum();
    if !total.is_finite() {
        return Err(MoeError::value(format!(
            "weights sum to {total}: scale them down"
        )));
    }
    Ok(())
}

/// Sorts one row of ids into `out`, checking range and repeats.
fn canonical_row(
    row: &[i64],
    num_experts: usize,
    row_index: usize,
    what: &str,
    out: &mut [u16],
) -> Result<()> {
    for (slot, &id) in out.iter_mut().zip(row) {
        if id < 0 || id as u64 >= num_experts as u64 {
            return Err(MoeError::value(format!(
                "{what} row {row_index} holds expert id {id}, out of range [0, {num_experts})"
            )));
        }
        *slot = id as u16;
    }
    out.sort_unstable();
    if let Some(w) = out.windows(2).find(|w| w[0] == w[1]) {
        return Err(MoeError::value(format!(
            "{what} row {row_index} repeats expert {}: a token's experts must be distinct",
            w[0]
        )));
    }
    Ok(())
}

/// A row's key, its weight and an index (the input row, or the distinct key's position).
type Keyed<K> = (K, f64, u32);

/// A sortable key for a canonical row, so that counting is a parallel sort.
trait RowKey: Ord + Copy + Send + Sync {
    fn encode(row: &[u16], bits: u32) -> Self;
    fn decode(self, bits: u32, out: &mut [u16]);
}

/// Rows packed into 128 bits, first id most significant, so key order is row order.
impl RowKey for u128 {
    fn encode(row: &[u16], bits: u32) -> Self {
        row.iter().fold(0u128, |acc, &e| (acc << bits) | e as u128)
    }
    fn decode(self, bits: u32, out: &mut [u16]) {
        let mask = (1u128 << bits) - 1;
        let k = out.len();
        for (j, slot) in out.iter_mut().enumerate() {
            *slot = ((self >> (bits as usize * (k - 1 - j))) & mask) as u16;
        }
    }
}

/// Wide rows (k * bits > 128) as plain arrays; lexicographic order is row order.
impl RowKey for [u16; MAX_K] {
    fn encode(row: &[u16], _bits: u32) -> Self {
        let mut key = [0u16; MAX_K];
        key[..row.len()].copy_from_slice(row);
        key
    }
    fn decode(self, _bits: u32, out: &mut [u16]) {
        let k = out.len();
        out.copy_from_slice(&self[..k]);
    }
}

impl SubsetTable {
    /// Counts the subsets of a [tokens, k] array of expert ids (rows in any order).
    /// A subset's weight is its number of tokens, or the sum of the tokens' `weights`.
    pub fn from_topk(
        ids: &[i64],
        k: usize,
        num_experts: usize,
        weights: Option<&[f64]>,
    ) -> Result<Self> {
        Self::build(ids, k, num_experts, weights, "topk")
    }

    /// `from_topk`, and for each row of `ids` (each token) the row of the table that
    /// holds its subset: a token's cost under a placement is then the table row's cost,
    /// without looking each token's subset up again.
    pub fn from_topk_with_rows(
        ids: &[i64],
        k: usize,
        num_experts: usize,
        weights: Option<&[f64]>,
    ) -> Result<(Self, Vec<u32>)> {
        if ids.len() / k.max(1) > u32::MAX as usize {
            return Err(MoeError::value(format!(
                "topk has {} rows: at most {} can be given their table rows",
                ids.len() / k.max(1),
                u32::MAX
            )));
        }
        Self::build_with_rows(ids, k, num_experts, weights, "topk", true)
            .map(|(table, rows)| (table, rows.unwrap_or_default()))
    }

    /// A table from given subsets and weights; repeated rows add their weights.
    pub fn from_subsets(
        ids: &[i64],
        k: usize,
        num_experts: usize,
        weights: &[f64],
    ) -> Result<Self> {
        Self::build(ids, k, num_experts, Some(weights), "subsets")
    }

    fn build(
        ids: &[i64],
        k: usize,
        num_experts: usize,
        weights: Option<&[f64]>,
        what: &str,
    ) -> Result<Self> {
        Self::build_with_rows(ids, k, num_experts, weights, what, false).map(|(table, _)| table)
    }

    /// The table, and with `with_rows` the table row of each row of `ids`.
    fn build_with_rows(
        ids: &[i64],
        k: usize,
        num_experts: usize,
        weights: Option<&[f64]>,
        what: &str,
        with_rows: bool,
    ) -> Result<(Self, Option<Vec<u32>>)> {
        check_shape(num_experts, k)?;
        if ids.len() % k != 0 {
            return Err(MoeError::value(format!(
                "{what} has {} ids, not a multiple of k = {k}",
                ids.len()
            )));
        }
        let rows = ids.len() / k;
        check_weights(weights, rows, what)?;
        let bits = usize::BITS - (num_experts - 1).max(1).leading_zeros();
        if k as u32 * bits <= 128 {
            Self::count::<u128>(ids, k, num_experts, weights, what, bits, with_rows)
        } else {
            Self::count::<[u16; MAX_K]>(ids, k, num_experts, weights, what, bits, with_rows)
        }
    }

    fn count<K: RowKey>(
        ids: &[i64],
        k: usize,
        num_experts: usize,
        weights: Option<&[f64]>,
        what: &str,
        bits: u32,
        with_rows: bool,
    ) -> Result<(Self, Option<Vec<u32>>)> {
        let rows = ids.len() / k;
        // Canonicalize in parallel; of several bad rows, report the first. Each key
        // carries its row of `ids` (free in memory beside a 16-byte key and a weight).
        let chunks: Vec<Result<Vec<Keyed<K>>>> = ids
            .par_chunks(ROWS_PER_TASK * k)
            .enumerate()
            .map(|(c, chunk)| {
                let first = c * ROWS_PER_TASK;
                let mut row = [0u16; MAX_K];
                chunk
                    .chunks_exact(k)
                    .enumerate()
                    .map(|(r, ids)| {
                        canonical_row(ids, num_experts, first + r, what, &mut row[..k])?;
                        let w = weights.map_or(1.0, |w| w[first + r]);
                        Ok((K::encode(&row[..k], bits), w, (first + r) as u32))
                    })
                    .collect()
            })
            .collect();
        let mut keyed = Vec::with_capacity(rows);
        for chunk in chunks {
            keyed.extend(chunk?);
        }
        Ok(Self::collapse(keyed, k, num_experts, bits, None, with_rows))
    }

    /// Adds up equal keys and orders the rows: weight descending, ties by the ids.
    /// `original_weight` None means the table is unpruned (its own total). With
    /// `with_rows`, also the table row of each input row (the third field of `keyed`,
    /// 0..keyed.len()).
    fn collapse<K: RowKey>(
        mut keyed: Vec<Keyed<K>>,
        k: usize,
        num_experts: usize,
        bits: u32,
        original_weight: Option<f64>,
        with_rows: bool,
    ) -> (Self, Option<Vec<u32>>) {
        // Equal keys are ordered by weight too, so sums are added in a fixed order.
        keyed.par_sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        // Each input row's subset as its position among the distinct keys (key order).
        let mut distinct_of = if with_rows {
            vec![0u32; keyed.len()]
        } else {
            Vec::new()
        };
        // (key, summed weight, position in key order)
        let mut unique: Vec<Keyed<K>> = Vec::new();
        for (key, w, input) in keyed {
            match unique.last_mut() {
                Some((last, acc, _)) if *last == key => *acc += w,
                _ => unique.push((key, w, unique.len() as u32)),
            }
            if with_rows {
                distinct_of[input as usize] = (unique.len() - 1) as u32;
            }
        }
        unique.par_sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let rows = with_rows.then(|| {
            let mut row_of = vec![0u32; unique.len()];
            for (row, u) in unique.iter().enumerate() {
                row_of[u.2 as usize] = row as u32;
            }
            distinct_of.iter().map(|&d| row_of[d as usize]).collect()
        });
        let mut subsets = vec![0u16; unique.len() * k];
        subsets
            .par_chunks_mut(k)
            .zip(unique.par_iter())
            .for_each(|(out, (key, _, _))| key.decode(bits, out));
        let weights: Vec<f64> = unique.iter().map(|u| u.1).collect();
        // `+ 0.0`: an empty table weighs +0, not the -0 an empty float sum gives.
        let original_weight = original_weight.unwrap_or_else(|| weights.iter().sum::<f64>() + 0.0);
        let table = SubsetTable {
            num_experts,
            k,
            subsets,
            weights,
            original_weight,
        };
        (table, rows)
    }

    /// One table holding the rows of all `tables` (same experts and k), equal rows adding
    /// their weights: the table `from_topk` gives over the concatenated tokens, in the
    /// same order. Counts (integer weights below 2^53) add exactly, so the result is
    /// identical whatever the split; general float weights may differ in the last bits.
    /// The original weight is the sum of the inputs' (their coverage carries over).
    pub fn merge(tables: &[&SubsetTable]) -> Result<Self> {
        let Some(first) = tables.first() else {
            return Err(MoeError::value("merge needs at least one table"));
        };
        let (num_experts, k) = (first.num_experts, first.k);
        if let Some((i, t)) = tables
            .iter()
            .enumerate()
            .find(|(_, t)| t.num_experts != num_experts || t.k != k)
        {
            return Err(MoeError::value(format!(
                "tables[{i}] has num_experts = {}, k = {} but tables[0] has num_experts = \
                 {num_experts}, k = {k}: merged tables must come from the same layer shape",
                t.num_experts, t.k
            )));
        }
        let original: f64 = tables.iter().map(|t| t.original_weight).sum();
        if !original.is_finite() {
            return Err(MoeError::value(format!(
                "merged weights sum to {original}: scale them down"
            )));
        }
        let bits = usize::BITS - (num_experts - 1).max(1).leading_zeros();
        let table = if k as u32 * bits <= 128 {
            Self::merge_keys::<u128>(tables, k, num_experts, bits, original)
        } else {
            Self::merge_keys::<[u16; MAX_K]>(tables, k, num_experts, bits, original)
        };
        Ok(table)
    }

    fn merge_keys<K: RowKey>(
        tables: &[&SubsetTable],
        k: usize,
        num_experts: usize,
        bits: u32,
        original: f64,
    ) -> Self {
        let rows: usize = tables.iter().map(|t| t.len()).sum();
        let mut keyed: Vec<Keyed<K>> = Vec::with_capacity(rows);
        for t in tables {
            // Rows are canonical already: only re-encode them.
            keyed.par_extend(
                t.subsets
                    .par_chunks_exact(k)
                    .zip(t.weights.par_iter())
                    .map(|(row, &w)| (K::encode(row, bits), w, 0)),
            );
        }
        let unpruned = tables.iter().all(|t| t.original_weight == t.total_weight());
        let original = (!unpruned).then_some(original);
        Self::collapse(keyed, k, num_experts, bits, original, false).0
    }

    pub fn num_experts(&self) -> usize {
        self.num_experts
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn len(&self) -> usize {
        self.weights.len()
    }
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }
    /// Row-major [len, k] expert ids.
    pub fn subsets(&self) -> &[u16] {
        &self.subsets
    }
    pub fn subset(&self, row: usize) -> &[u16] {
        &self.subsets[row * self.k..(row + 1) * self.k]
    }
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }
    pub fn total_weight(&self) -> f64 {
        // + 0.0: the empty sum of floats is -0.0, which would print as "-0".
        self.weights.iter().sum::<f64>() + 0.0
    }
    /// Share of the unpruned table's weight this table keeps.
    pub fn coverage(&self) -> f64 {
        if self.original_weight > 0.0 {
            self.total_weight() / self.original_weight
        } else {
            1.0
        }
    }

    /// Total weight of the table this one was pruned from (its own if unpruned).
    pub fn original_weight(&self) -> f64 {
        self.original_weight
    }

    /// This table as the pruned part of a table of total weight `original_weight` (how a
    /// saved pruned table is rebuilt): `coverage` becomes total_weight / original_weight.
    pub fn with_original_weight(mut self, original_weight: f64) -> Result<Self> {
        let total = self.total_weight();
        if !(original_weight.is_finite() && original_weight >= total) {
            return Err(MoeError::value(format!(
                "original_weight = {original_weight} must be finite and at least the table's total weight {total}"
            )));
        }
        self.original_weight = original_weight;
        Ok(self)
    }

    /// The first `rows` rows (the heaviest), remembering the weight left out.
    fn prefix(&self, rows: usize) -> SubsetTable {
        SubsetTable {
            num_experts: self.num_experts,
            k: self.k,
            subsets: self.subsets[..rows * self.k].to_vec(),
            weights: self.weights[..rows].to_vec(),
            original_weight: self.original_weight,
        }
    }

    /// The shortest prefix of rows whose weight share reaches `coverage` (of this table),
    /// further cut to at most `max_subsets` rows.
    pub fn prune(&self, coverage: Option<f64>, max_subsets: Option<usize>) -> Result<SubsetTable> {
        if coverage.is_none() && max_subsets.is_none() {
            return Err(MoeError::value("prune needs coverage or max_subsets"));
        }
        let mut rows = self.len();
        if let Some(q) = coverage {
            if !(q > 0.0 && q <= 1.0) {
                return Err(MoeError::value(format!(
                    "coverage must be in (0, 1], got {q}"
                )));
            }
            let target = q * self.total_weight();
            let mut acc = 0.0;
            rows = self
                .weights
                .iter()
                .position(|w| {
                    acc += w;
                    acc >= target
                })
                .map_or(self.len(), |i| i + 1);
        }
        if let Some(n) = max_subsets {
            if n == 0 {
                return Err(MoeError::value("max_subsets must be at least 1, got 0"));
            }
            rows = rows.min(n);
        }
        Ok(self.prefix(rows))
    }

    /// For each expert, the rows that contain it (ascending).
    pub fn expert_index(&self) -> ExpertIndex {
        let mut offsets = vec![0usize; self.num_experts + 1];
        for &e in &self.subsets {
            offsets[e as usize + 1] += 1;
        }
        for e in 0..self.num_experts {
            offsets[e + 1] += offsets[e];
        }
        let mut next = offsets.clone();
        let mut rows = vec![0u32; self.subsets.len()];
        for (r, subset) in self.subsets.chunks_exact(self.k).enumerate() {
            for &e in subset {
                rows[next[e as usize]] = r as u32;
                next[e as usize] += 1;
            }
        }
        ExpertIndex { offsets, rows }
    }

    /// Tokens' load per expert: the weight of the rows holding it.
    pub fn expert_load(&self) -> Vec<f64> {
        let mut load = vec![0.0; self.num_experts];
        for (subset, w) in self.subsets.chunks_exact(self.k).zip(&self.weights) {
            for &e in subset {
                load[e as usize] += w;
            }
        }
        load
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rows_in_any_order() {
        let ids = [3, 1, 1, 3, 2, 0, 1, 3];
        let t = SubsetTable::from_topk(&ids, 2, 4, None).unwrap();
        assert_eq!(t.subsets(), &[1, 3, 0, 2]);
        assert_eq!(t.weights(), &[3.0, 1.0]);
        assert_eq!(t.coverage(), 1.0);
    }

    #[test]
    fn ties_are_ordered_by_ids() {
        let ids = [5, 4, 0, 9, 2, 1];
        let t = SubsetTable::from_topk(&ids, 2, 10, None).unwrap();
        assert_eq!(t.subsets(), &[0, 9, 1, 2, 4, 5]);
    }

    #[test]
    fn wide_keys_match_packed_keys() {
        // k = 16 over 1000 experts needs 160 bits: the array key path.
        let mut ids = Vec::new();
        for r in 0..50i64 {
            for j in 0..16i64 {
                ids.push((r % 7 + j * 61) % 1000);
            }
        }
        let t = SubsetTable::from_topk(&ids, 16, 1000, None).unwrap();
        assert_eq!(t.len(), 7);
        assert_eq!(t.total_weight(), 50.0);
        for r in 0..t.len() {
            assert!(t.subset(r).windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn rejects_bad_rows() {
        let err = SubsetTable::from_topk(&[0, 4], 2, 4, None).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        let err = SubsetTable::from_topk(&[1, 1], 2, 4, None).unwrap_err();
        assert!(err.to_string().contains("repeats expert 1"), "{err}");
        let err = SubsetTable::from_topk(&[0, 1], 2, 4, Some(&[-1.0])).unwrap_err();
        assert!(err.to_string().contains("non-negative"), "{err}");
        let err = SubsetTable::from_topk(&[0, 1, 0, 1], 2, 4, Some(&[1e308, 1e308])).unwrap_err();
        assert!(err.to_string().contains("weights sum to inf"), "{err}");
    }

    /// A deterministic stream of distinct-id rows, skewed so that rows repeat and tie.
    fn rows(n: usize, k: usize, e: usize, seed: u64) -> Vec<i64> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let mut ids = Vec::with_capacity(n * k);
        for _ in 0..n {
            let mut row: Vec<i64> = Vec::with_capacity(k);
            while row.len() < k {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let x = ((state >> 33) % (e as u64 * e as u64)) as f64;
                let id = (x.sqrt() as i64).min(e as i64 - 1);
                if !row.contains(&id) {
                    row.push(id);
                }
            }
            ids.extend(row);
        }
        ids
    }

    #[test]
    fn merge_of_chunks_equals_one_table() {
        for (k, e) in [(2, 6), (4, 16), (16, 1000)] {
            let ids = rows(3000, k, e, 7);
            let whole = SubsetTable::from_topk(&ids, k, e, None).unwrap();
            // Uneven chunks, one of them empty.
            let cuts = [0, 1, 700, 700, 2500, 3000];
            let parts: Vec<SubsetTable> = cuts
                .windows(2)
                .map(|c| SubsetTable::from_topk(&ids[c[0] * k..c[1] * k], k, e, None).unwrap())
                .collect();
            let refs: Vec<&SubsetTable> = parts.iter().collect();
            assert_eq!(SubsetTable::merge(&refs).unwrap(), whole);
            // Merging is associative: a merge of merges is the same table.
            let left = SubsetTable::merge(&refs[..2]).unwrap();
            let right = SubsetTable::merge(&refs[2..]).unwrap();
            assert_eq!(SubsetTable::merge(&[&left, &right]).unwrap(), whole);
        }
    }

    /// Each token's row holds its subset (ids in any order, repeats of subsets common),
    /// and the table is `from_topk`'s, with and without weights, narrow and wide keys.
    #[test]
    fn rows_of_tokens_hold_their_subsets() {
        for (k, e) in [(2, 6), (4, 16), (16, 1000)] {
            let ids = rows(3000, k, e, 11);
            let weights: Vec<f64> = (0..3000).map(|i| 0.5 + (i % 7) as f64).collect();
            for w in [None, Some(weights.as_slice())] {
                let (table, at) = SubsetTable::from_topk_with_rows(&ids, k, e, w).unwrap();
                assert_eq!(table, SubsetTable::from_topk(&ids, k, e, w).unwrap());
                assert_eq!(at.len(), 3000);
                for (token, &row) in ids.chunks_exact(k).zip(&at) {
                    let mut sorted: Vec<u16> = token.iter().map(|&x| x as u16).collect();
                    sorted.sort_unstable();
                    let r = row as usize;
                    assert_eq!(&table.subsets()[r * k..(r + 1) * k], sorted.as_slice());
                }
            }
        }
        let (empty, at) = SubsetTable::from_topk_with_rows(&[], 3, 8, None).unwrap();
        assert!(empty.is_empty() && at.is_empty());
    }

    #[test]
    fn merge_adds_integer_weights_exactly() {
        let ids = rows(500, 3, 8, 3);
        let w: Vec<f64> = (0..500).map(|i| (i % 5) as f64 * 0.25).collect();
        let whole = SubsetTable::from_topk(&ids, 3, 8, Some(&w)).unwrap();
        let a = SubsetTable::from_topk(&ids[..600], 3, 8, Some(&w[..200])).unwrap();
        let b = SubsetTable::from_topk(&ids[600..], 3, 8, Some(&w[200..])).unwrap();
        assert_eq!(SubsetTable::merge(&[&a, &b]).unwrap(), whole);
    }

    #[test]
    fn merge_refuses_other_shapes_and_nothing() {
        let a = SubsetTable::from_topk(&[0, 1], 2, 4, None).unwrap();
        let b = SubsetTable::from_topk(&[0, 1], 2, 5, None).unwrap();
        let err = SubsetTable::merge(&[&a, &b]).unwrap_err();
        assert!(err.to_string().contains("tables[1]"), "{err}");
        assert!(SubsetTable::merge(&[]).is_err());
    }

    #[test]
    fn merge_of_pruned_tables_keeps_their_coverage() {
        let ids = [0, 1, 0, 1, 0, 1, 0, 2];
        let t = SubsetTable::from_topk(&ids, 2, 3, None).unwrap();
        let p = t.prune(None, Some(1)).unwrap();
        let m = SubsetTable::merge(&[&p, &p]).unwrap();
        assert_eq!(m.total_weight(), 6.0);
        assert!((m.coverage() - 0.75).abs() < 1e-12);
    }

    #[test]
    fn prune_keeps_shortest_prefix() {
        let ids = [0, 1, 0, 1, 0, 1, 0, 2, 0, 2, 1, 2];
        let t = SubsetTable::from_topk(&ids, 2, 3, None).unwrap();
        let p = t.prune(Some(0.5), None).unwrap();
        assert_eq!(p.len(), 1);
        assert!((p.coverage() - 0.5).abs() < 1e-12);
        let p = t.prune(Some(0.51), None).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(t.prune(None, Some(1)).unwrap().len(), 1);
        assert!(t.prune(Some(1.5), None).is_err());
    }

    #[test]
    fn index_lists_rows_of_each_expert() {
        let ids = [0, 1, 0, 1, 0, 2];
        let t = SubsetTable::from_topk(&ids, 2, 3, None).unwrap();
        let idx = t.expert_index();
        assert_eq!(idx.rows_of(0), &[0, 1]);
        assert_eq!(idx.rows_of(1), &[0]);
        assert_eq!(idx.rows_of(2), &[1]);
    }
}
