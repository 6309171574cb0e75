//! Content-defined chunking: where an artifact's bytes are cut into chunks.
//!
//! Cuts depend on the bytes around them, not on offsets, so a new version of a file that
//! shares most bytes with the old one (a retrained model, a rebuilt binary) shares most
//! chunks, and only the chunks around each change move over the mesh. The cut rule is
//! FastCDC's: a gear hash rolled over the bytes, a cut where its top bits are zero, with a
//! stricter mask before the average size and a looser one after it, so that sizes cluster
//! around the average. The gear table and the sizes are part of the format: changing them
//! changes every artifact's chunks (and so its id).

/// No chunk (but a file's last) is shorter.
pub const MIN_CHUNK: usize = 64 * 1024;
/// The size chunks cluster around.
pub const AVG_CHUNK: usize = 256 * 1024;
/// No chunk is longer.
pub const MAX_CHUNK: usize = 1024 * 1024;

/// Before the average size: 20 bits must be zero (a cut is 4× rarer than at the average).
const MASK_STRICT: u64 = !0 << (64 - 20);
/// After it: 16 bits (4× likelier), so long chunks are rare.
const MASK_LOOSE: u64 = !0 << (64 - 16);

/// One pseudo-random word per byte value, from a fixed seed (splitmix64).
const GEAR: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut state: u64 = 0x5248_495a_4f4d_4531; // fixed: part of the format
    let mut i = 0;
    while i < 256 {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
};

/// The length of the first chunk of `data`: `data.len()` when it is no longer than
/// [`MIN_CHUNK`], else a content-defined cut between [`MIN_CHUNK`] and [`MAX_CHUNK`].
pub fn first_cut(data: &[u8]) -> usize {
    if data.len() <= MIN_CHUNK {
        return data.len();
    }
    let end = data.len().min(MAX_CHUNK);
    let normal = AVG_CHUNK.min(end);
    let mut hash: u64 = 0;
    // The bytes before MIN_CHUNK are skipped, as in FastCDC: a cut there is not allowed, and
    // the hash only remembers the last 64 bytes anyway.
    let mut i = MIN_CHUNK;
    while i < normal {
        hash = (hash << 1).wrapping_add(GEAR[data[i] as usize]);
        if hash & MASK_STRICT == 0 {
            return i + 1;
        }
        i += 1;
    }
    while i < end {
        hash = (hash << 1).wrapping_add(GEAR[data[i] as usize]);
        if hash & MASK_LOOSE == 0 {
            return i + 1;
        }
        i += 1;
    }
    end
}

/// Cuts a stream into chunks, handing each to `chunk` in order; returns the bytes read.
/// Memory stays at two [`MAX_CHUNK`]s whatever the stream's length.
pub fn chunk_stream<R: std::io::Read>(
    mut reader: R,
    mut chunk: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    let mut buffer = vec![0u8; 2 * MAX_CHUNK];
    let mut filled = 0;
    let mut total = 0u64;
    let mut eof = false;
    loop {
        while !eof && filled < buffer.len() {
            match reader.read(&mut buffer[filled..]) {
                Ok(0) => eof = true,
                Ok(n) => {
                    filled += n;
                    total += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let mut start = 0;
        // A cut needs MAX_CHUNK bytes ahead unless the stream has ended, or chunks would
        // depend on how the reader happened to split its reads.
        while filled - start >= MAX_CHUNK || (eof && start < filled) {
            let len = first_cut(&buffer[start..filled]);
            chunk(&buffer[start..start + len])?;
            start += len;
        }
        if eof {
            return Ok(total);
        }
        buffer.copy_within(start..filled, 0);
        filled -= start;
    }
}

/// The chunks of `data`, as lengths.
pub fn chunk_lengths(data: &[u8]) -> Vec<usize> {
    let mut lengths = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let len = first_cut(rest);
        lengths.push(len);
        rest = &rest[len..];
    }
    lengths
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    /// Bytes no chunking rule can find structure in, the same for the same seed.
    pub(in crate::fleet::artifacts) fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut data = vec![0u8; len];
        rng.fill(&mut data[..]);
        data
    }

    /// A reader that hands out at most `step` bytes per read.
    struct Dribble<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl std::io::Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn streamed(data: &[u8], step: usize) -> Vec<usize> {
        let mut lengths = Vec::new();
        let read = chunk_stream(Dribble { data, step }, |c| {
            lengths.push(c.len());
            Ok(())
        })
        .unwrap();
        assert_eq!(read, data.len() as u64);
        lengths
    }

    #[test]
    fn sizes_cluster_around_the_average_within_the_bounds() {
        let data = noise(1, 32 * 1024 * 1024);
        let lengths = chunk_lengths(&data);
        let (last, body) = lengths.split_last().unwrap();
        assert!(*last <= MAX_CHUNK);
        assert!(body.iter().all(|&l| (MIN_CHUNK..=MAX_CHUNK).contains(&l)));
        let mean = data.len() / lengths.len();
        // Normalized chunking puts the mean a little above the average size.
        assert!(
            (AVG_CHUNK / 2..=AVG_CHUNK * 2).contains(&mean),
            "mean chunk {mean} bytes"
        );
    }

    #[test]
    fn an_edit_in_the_middle_changes_only_the_chunks_around_it() {
        let old = noise(2, 16 * 1024 * 1024);
        let mut new = old.clone();
        // 1 MiB rewritten in the middle, and 100 bytes inserted after it.
        let at = 8 * 1024 * 1024;
        new[at..at + 1024 * 1024].copy_from_slice(&noise(3, 1024 * 1024));
        new.splice(at + 2 * 1024 * 1024..at + 2 * 1024 * 1024, noise(4, 100));
        let chunks = |data: &[u8]| -> std::collections::HashSet<Vec<u8>> {
            let mut out = std::collections::HashSet::new();
            let mut rest = data;
            for len in chunk_lengths(data) {
                out.insert(rest[..len].to_vec());
                rest = &rest[len..];
            }
            out
        };
        let before = chunks(&old);
        let moved: usize = chunks(&new)
            .iter()
            .filter(|c| !before.contains(*c))
            .map(Vec::len)
            .sum();
        // The changed MiB, the chunks it straddles, and the insertion's chunk.
        assert!(
            moved <= 1024 * 1024 + 4 * MAX_CHUNK,
            "{moved} bytes in new chunks for a 1 MiB change"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn streaming_cuts_where_the_whole_slice_does(
            seed in any::<u64>(),
            len in 0usize..3 * MAX_CHUNK + 10,
            step in 1usize..300_000,
        ) {
            let data = noise(seed, len);
            let whole = chunk_lengths(&data);
            prop_assert_eq!(whole.iter().sum::<usize>(), len);
            prop_assert_eq!(streamed(&data, step), whole);
        }
    }
}
