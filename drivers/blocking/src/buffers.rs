//! A connection's buffers, which grow as the connection needs them.
//!
//! ureq's own buffers take their whole size on first use, zeroed: the input buffer is the
//! largest response head allowed plus 4 KiB (68 KiB by default), the output one 32 KiB. A
//! thousand connections opened at once then touch 100 MiB, and the page faults take a third
//! of the burst's CPU. Here the input buffer starts at a page and doubles each time a read
//! fills what it was offered, up to the same size; the output buffer is allocated zeroed
//! (fresh memory comes zeroed from the system, so only the pages a request head touches are
//! faulted in).

use ureq::unversioned::transport::Buffers;

/// The input buffer's first size.
const FIRST_INPUT: usize = 4 << 10;
/// The scratch space ureq asks for when it sends a request body (as its own buffers give).
const MIN_TMP: usize = 10 << 10;

/// Input and output buffers for one connection: see the [module docs](self).
#[derive(Debug)]
pub(crate) struct GrowingBuffers {
    input: Vec<u8>,
    /// `input[consumed..filled]` is read and not yet consumed.
    consumed: usize,
    filled: usize,
    /// The input buffer never grows past this for reads (a response head must fit).
    max_input: usize,
    /// How much room the last [`input_append_buf`](Buffers::input_append_buf) offered,
    /// and whether the read after it filled that room (more was likely waiting).
    offered: usize,
    filled_offer: bool,
    output: Vec<u8>,
    output_size: usize,
    /// Whether the last consume took anything (ureq's contract for `can_use_input`).
    progress: bool,
}

impl GrowingBuffers {
    /// Buffers that read up to `max_input` bytes at a time and write through `output_size`.
    pub(crate) fn new(max_input: usize, output_size: usize) -> GrowingBuffers {
        GrowingBuffers {
            input: Vec::new(),
            consumed: 0,
            filled: 0,
            max_input: max_input.max(1),
            offered: 0,
            filled_offer: false,
            output: Vec::new(),
            output_size: output_size.max(1),
            progress: false,
        }
    }

    /// Makes at least `needed` bytes of room after the unconsumed input, within
    /// `max_input` unless `past_max`: moves the unconsumed bytes to the front, and grows
    /// the buffer (by doubling) when that is not enough or the last read filled its room.
    fn make_room(&mut self, needed: usize, past_max: bool) {
        if self.consumed == self.filled {
            self.consumed = 0;
            self.filled = 0;
        }
        let room = self.input.len() - self.filled;
        if room >= needed && !self.filled_offer {
            return;
        }
        if self.consumed > 0 {
            self.input.copy_within(self.consumed..self.filled, 0);
            self.filled -= self.consumed;
            self.consumed = 0;
        }
        let mut len = self.input.len().max(FIRST_INPUT.min(self.max_input));
        if self.filled_offer {
            len = (len * 2).min(self.max_input).max(len);
            self.filled_offer = false;
        }
        while len - self.filled < needed && len < self.max_input {
            len = (len * 2).min(self.max_input);
        }
        if len - self.filled < needed && past_max {
            len = self.filled + needed;
        }
        if len > self.input.len() {
            self.input.resize(len, 0);
        }
    }

    fn ensure_output(&mut self) {
        if self.output.is_empty() {
            // Zeroed by the allocator: fresh memory is not touched until written.
            self.output = vec![0; self.output_size];
        }
    }
}

impl Buffers for GrowingBuffers {
    fn output(&mut self) -> &mut [u8] {
        self.ensure_output();
        &mut self.output
    }

    fn input(&self) -> &[u8] {
        &self.input[self.consumed..self.filled]
    }

    fn input_append_buf(&mut self) -> &mut [u8] {
        self.make_room(1, false);
        self.offered = self.input.len() - self.filled;
        &mut self.input[self.filled..]
    }

    fn input_appended(&mut self, amount: usize) {
        let amount = amount.min(self.input.len() - self.filled);
        self.filled += amount;
        self.filled_offer = amount > 0 && amount == self.offered;
    }

    fn input_consume(&mut self, amount: usize) {
        let amount = amount.min(self.filled - self.consumed);
        self.progress = amount > 0;
        self.consumed += amount;
    }

    fn tmp_and_output(&mut self) -> (&mut [u8], &mut [u8]) {
        self.make_room(MIN_TMP, true);
        self.ensure_output();
        (&mut self.input[self.filled..], &mut self.output)
    }

    fn can_use_input(&self) -> bool {
        self.filled > self.consumed && self.progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends `n` bytes numbered from `from`, as a read would.
    fn read(buffers: &mut GrowingBuffers, from: usize, n: usize) -> usize {
        let room = buffers.input_append_buf();
        let n = n.min(room.len());
        for (i, b) in room[..n].iter_mut().enumerate() {
            *b = (from + i) as u8;
        }
        buffers.input_appended(n);
        n
    }

    #[test]
    fn input_starts_at_a_page_and_doubles_when_reads_fill_it_up_to_the_maximum() {
        let mut buffers = GrowingBuffers::new(68 << 10, 32 << 10);
        let mut offered = Vec::new();
        for _ in 0..6 {
            offered.push(buffers.input_append_buf().len());
            let n = read(&mut buffers, 0, usize::MAX);
            buffers.input_consume(n);
        }
        assert_eq!(
            offered,
            [4 << 10, 8 << 10, 16 << 10, 32 << 10, 64 << 10, 68 << 10]
        );
        // A read that does not fill its room leaves the size as it is.
        let mut buffers = GrowingBuffers::new(68 << 10, 32 << 10);
        for _ in 0..3 {
            assert_eq!(buffers.input_append_buf().len(), 4 << 10);
            read(&mut buffers, 0, 100);
            buffers.input_consume(100);
        }
    }

    #[test]
    fn a_head_larger_than_a_page_stays_whole_as_the_buffer_grows() {
        let mut buffers = GrowingBuffers::new(68 << 10, 32 << 10);
        let mut total = 0;
        // Nothing is consumed (the head is not complete yet), and reads come in odd sizes.
        while total < 40_000 {
            total += read(&mut buffers, total, 3_000);
            buffers.input_consume(0);
            assert!(!buffers.can_use_input());
        }
        let input = buffers.input();
        assert_eq!(input.len(), total);
        assert!(input.iter().enumerate().all(|(i, &b)| b == i as u8));
        // Consumed in part: the rest moves to the front when room runs out, intact.
        buffers.input_consume(39_000);
        assert!(buffers.can_use_input());
        let room_left = buffers.input_append_buf().len();
        let mut more = 0;
        while more <= room_left {
            more += read(&mut buffers, total + more, 7_000);
        }
        let input = buffers.input();
        assert_eq!(input.len(), total - 39_000 + more);
        assert!(input
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (39_000 + i) as u8));
    }

    #[test]
    fn input_never_grows_past_its_maximum_for_reads() {
        let mut buffers = GrowingBuffers::new(10_000, 1024);
        let mut total = 0;
        loop {
            let n = read(&mut buffers, total, usize::MAX);
            if n == 0 {
                break;
            }
            total += n;
        }
        assert_eq!(total, 10_000);
        assert!(buffers.input_append_buf().is_empty());
        // Scratch space for a request body may go past it, as ureq's own buffers do.
        let (tmp, output) = buffers.tmp_and_output();
        assert!(tmp.len() >= MIN_TMP);
        assert_eq!(output.len(), 1024);
        assert_eq!(buffers.input().len(), 10_000);
    }
}
