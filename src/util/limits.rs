//! The one owner of the core's limits and of the checks of sizes that involve them.
//! The bindings export the limits (`moefast._core.MAX_GPUS`, ...) and `check_memory`,
//! so that the Python layer imports them instead of copying them.

use crate::util::error::{MoeError, Result};

/// Largest number of experts a layer may have (ids are stored as u16).
pub const MAX_EXPERTS: usize = 65_535;
/// Largest top-k a table holds (a row's experts are bits of a u16).
pub const MAX_K: usize = 16;
/// Largest number of GPUs a placement spans.
pub const MAX_GPUS: usize = 1024;
/// Tokens in one simulated step: the drawn indices of a step are held in memory at once.
pub const MAX_BATCH: usize = 1 << 24;
/// Step times `simulate` returns in all (8 bytes each).
pub const MAX_STEP_TIMES: usize = 100_000_000;
/// Batches in the sample of the batch-aware search.
pub const MAX_SAMPLE_BATCHES: usize = 1 << 20;
/// Tokens drawn for that sample in all (the default sample of the largest batch is 2^28).
pub const MAX_SAMPLED_TOKENS: usize = 1 << 28;
/// Expert ids the node-aware batch search holds per sample (tokens x k; it holds two
/// samples of 8-byte ids): 2^26 is 512 MiB a sample, so the largest legal call fits
/// in a few GiB instead of asking for tens.
pub const MAX_SAMPLED_IDS: usize = 1 << 26;

pub fn check_num_gpus(num_gpus: usize) -> Result<()> {
    if num_gpus == 0 || num_gpus > MAX_GPUS {
        return Err(MoeError::value(format!(
            "num_gpus must be in [1, {MAX_GPUS}], got {num_gpus}"
        )));
    }
    Ok(())
}

/// Whether `num_gpus` GPUs of `slots_per_gpu` slots can hold `num_experts` experts: each
/// expert at least once, no GPU holding an expert twice.
pub fn check_memory(num_experts: usize, num_gpus: usize, slots_per_gpu: usize) -> Result<()> {
    check_num_gpus(num_gpus)?;
    if slots_per_gpu == 0 {
        return Err(MoeError::value("slots_per_gpu must be at least 1, got 0"));
    }
    if slots_per_gpu > num_experts {
        return Err(MoeError::value(format!(
            "slots_per_gpu = {slots_per_gpu} is more than the {num_experts} experts: \
             a GPU holds each expert at most once"
        )));
    }
    let slots = num_gpus.saturating_mul(slots_per_gpu);
    if slots < num_experts {
        return Err(MoeError::value(format!(
            "{num_gpus} GPUs x {slots_per_gpu} slots = {slots} slots cannot hold {num_experts} \
             experts: every expert needs a slot (slots_per_gpu >= {} on {num_gpus} GPUs)",
            num_experts.div_ceil(num_gpus)
        )));
    }
    Ok(())
}

/// Whether a sample of `num_batches` batches of `batch_size` tokens of `k` experts each
/// fits the limits; checked before anything of that size is allocated.
pub fn check_sample(batch_size: usize, num_batches: usize, k: usize) -> Result<()> {
    if batch_size == 0 || num_batches == 0 {
        return Err(MoeError::value(
            "batch_size and num_batches must be at least 1",
        ));
    }
    if batch_size > MAX_BATCH || num_batches > MAX_SAMPLE_BATCHES {
        return Err(MoeError::value(format!(
            "batch_size must be at most {MAX_BATCH} and num_batches at most {MAX_SAMPLE_BATCHES}, \
             got {batch_size} and {num_batches}"
        )));
    }
    let tokens = batch_size.saturating_mul(num_batches);
    if tokens > MAX_SAMPLED_TOKENS {
        return Err(MoeError::value(format!(
            "batch_size x num_batches = {batch_size} x {num_batches} is more than \
             {MAX_SAMPLED_TOKENS} sampled tokens"
        )));
    }
    if tokens.saturating_mul(k) > MAX_SAMPLED_IDS {
        return Err(MoeError::value(format!(
            "batch_size x num_batches x k = {batch_size} x {num_batches} x {k} is more than \
             {MAX_SAMPLED_IDS} sampled expert ids: use fewer or smaller batches"
        )));
    }
    Ok(())
}

/// A vector of `len` elements' room, or a ValueError saying what did not fit (an
/// allocation failure is an error, never an abort).
pub fn reserve<T>(len: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| {
        MoeError::value(format!(
            "{what}: {len} elements of {} bytes do not fit in memory",
            std::mem::size_of::<T>()
        ))
    })?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_beyond_the_limits_are_refused_before_any_allocation() {
        assert!(check_sample(64, 128, 8).is_ok());
        let msg = |r: Result<()>| r.unwrap_err().to_string();
        assert!(msg(check_sample(0, 1, 2)).contains("at least 1"));
        assert!(msg(check_sample(MAX_BATCH + 1, 1, 2)).contains("at most"));
        assert!(msg(check_sample(MAX_BATCH, 1 << 20, 2)).contains("sampled tokens"));
        // The default sample of the largest batch: 16 batches of 2^24 tokens, k = 2.
        assert!(msg(check_sample(MAX_BATCH, 16, 2)).contains("sampled expert ids"));
        assert!(check_sample(MAX_SAMPLED_IDS / 8, 1, 8).is_ok());
        assert!(check_sample(MAX_SAMPLED_IDS / 8 + 1, 1, 8).is_err());
    }

    #[test]
    fn an_allocation_that_cannot_succeed_is_an_error() {
        let err = reserve::<u64>(usize::MAX / 4, "the sample").unwrap_err();
        assert!(err.to_string().contains("do not fit in memory"), "{err}");
        assert!(reserve::<u64>(16, "x").unwrap().capacity() >= 16);
    }

    #[test]
    fn memory_fits_exactly_when_every_expert_has_a_slot() {
        for e in 1..20 {
            for g in 1..8 {
                for s in 1..10 {
                    let fits = g * s >= e && s <= e;
                    assert_eq!(check_memory(e, g, s).is_ok(), fits, "E={e} G={g} s={s}");
                }
            }
        }
        let msg = |r: Result<()>| r.unwrap_err().to_string();
        assert!(msg(check_memory(8, 2, 3)).contains("cannot hold 8 experts"));
        assert!(msg(check_memory(8, 2, 3)).contains("slots_per_gpu >= 4"));
        assert!(msg(check_memory(8, 2, 9)).contains("more than the 8 experts"));
        assert!(msg(check_memory(8, 0, 9)).contains("num_gpus must be in [1, 1024], got 0"));
        assert!(msg(check_memory(8, MAX_GPUS + 1, 9)).contains("num_gpus"));
        assert!(msg(check_memory(8, 4, 0)).contains("slots_per_gpu must be at least 1"));
        assert!(check_memory(MAX_EXPERTS, MAX_GPUS, MAX_EXPERTS).is_ok());
    }
}
