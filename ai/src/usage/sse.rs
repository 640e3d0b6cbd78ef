//! An incremental server-sent-events parser (WHATWG "event stream
//! interpretation") that keeps only the event being assembled.

/// Largest event kept, in bytes (its data plus the line being read). The
/// Responses API's `response.completed` event repeats the whole output, so
/// this is sized for long answers; larger events are skipped.
pub(crate) const MAX_EVENT: usize = 4 << 20;
/// Longest `event:` name kept; real names are short.
const MAX_EVENT_NAME: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct SseParser {
    /// The line being read when the last chunk ended mid-line.
    line: Vec<u8>,
    /// The current event's `data` lines, each followed by `\n`.
    data: Vec<u8>,
    event: Vec<u8>,
    /// The current line outgrew the cap: ignore it up to its end.
    skip_line: bool,
    /// The current event outgrew the cap: ignore it up to the blank line.
    skip_event: bool,
    /// The last chunk ended in `\r`; a `\n` opening the next one ends the same line.
    after_cr: bool,
}

impl SseParser {
    /// Parses `chunk`, calling `sink(event_name, data)` for each complete
    /// event with data.
    pub(crate) fn feed(&mut self, mut chunk: &[u8], sink: &mut impl FnMut(&[u8], &[u8])) {
        if chunk.is_empty() {
            return;
        }
        if std::mem::take(&mut self.after_cr) && chunk[0] == b'\n' {
            chunk = &chunk[1..];
        }
        while let Some(i) = memchr::memchr2(b'\r', b'\n', chunk) {
            let mut next = i + 1;
            if chunk[i] == b'\r' {
                match chunk.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            if self.line.is_empty() && !self.skip_line {
                self.line_done(&chunk[..i], sink);
            } else {
                self.push_partial(&chunk[..i]);
                let line = std::mem::take(&mut self.line);
                if !self.skip_line {
                    self.line_done(&line, sink);
                }
                self.line = line;
                self.line.clear();
            }
            self.skip_line = false;
            chunk = &chunk[next..];
        }
        self.push_partial(chunk);
    }

    /// Ends the stream. A last event the server did not close with a blank
    /// line is still delivered: its JSON either parses or is ignored.
    pub(crate) fn finish(mut self, sink: &mut impl FnMut(&[u8], &[u8])) {
        if !self.skip_line && !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, sink);
        }
        self.line_done(b"", sink);
    }

    /// Bytes held now, for the bounded-memory tests.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.line.capacity() + self.data.capacity() + self.event.capacity()
    }

    fn push_partial(&mut self, bytes: &[u8]) {
        if self.skip_line || bytes.is_empty() {
            return;
        }
        if self.line.len() + self.data.len() + bytes.len() > MAX_EVENT {
            self.drop_event();
            self.skip_line = true;
        } else {
            super::extend_capped(&mut self.line, bytes, MAX_EVENT);
        }
    }

    fn drop_event(&mut self) {
        self.skip_event = true;
        // Release the memory too: one oversized event must not pin 4 MiB for the rest of the stream.
        self.line = Vec::new();
        self.data = Vec::new();
    }

    fn line_done(&mut self, line: &[u8], sink: &mut impl FnMut(&[u8], &[u8])) {
        if line.is_empty() {
            if !self.skip_event && !self.data.is_empty() {
                let data = &self.data[..self.data.len() - 1];
                sink(&self.event, data);
            }
            self.data.clear();
            self.event.clear();
            self.skip_event = false;
            return;
        }
        if self.skip_event || line[0] == b':' {
            return;
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                if self.data.len() + value.len() + 1 > MAX_EVENT {
                    self.drop_event();
                } else {
                    super::extend_capped(&mut self.data, value, MAX_EVENT);
                    super::extend_capped(&mut self.data, b"\n", MAX_EVENT);
                }
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(&value[..value.len().min(MAX_EVENT_NAME)]);
            }
            _ => {}
        }
    }
}
