//! Inputs for the backends' decoder checks (their hidden `fuzzing` modules): the bytes a
//! fuzz target would get, from a fixed pseudo-random sequence, so a crate's own tests run
//! the fuzz target's body on stable, the same inputs every run.

/// `count` byte strings of lengths `0, 1, ..` cycling below `max_len`, each filled from one
/// xorshift sequence with a fixed seed.
///
/// ```
/// let inputs: Vec<Vec<u8>> = persistence_tck::fuzz::random_inputs(3, 2).collect();
/// assert_eq!(inputs.iter().map(Vec::len).collect::<Vec<_>>(), [0, 1, 0]);
/// assert_eq!(inputs, persistence_tck::fuzz::random_inputs(3, 2).collect::<Vec<_>>());
/// ```
pub fn random_inputs(count: usize, max_len: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..count).map(move |i| {
        (0..i % max_len.max(1))
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    })
}
