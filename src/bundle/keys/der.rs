//! Just enough of a DER reader to walk a key.

use super::KeyFormatError;

pub(super) const TAG_INTEGER: u8 = 0x02;
pub(super) const TAG_BIT_STRING: u8 = 0x03;
pub(super) const TAG_OCTET_STRING: u8 = 0x04;
pub(super) const TAG_OID: u8 = 0x06;
pub(super) const TAG_SEQUENCE: u8 = 0x30;
pub(super) const TAG_CONTEXT_0: u8 = 0xa0;
pub(super) const TAG_CONTEXT_1: u8 = 0x81;

/// Just enough DER to walk a key: single-byte tags, definite lengths.
pub(super) struct Der<'a> {
    what: &'static str,
    rest: &'a [u8],
}

impl<'a> Der<'a> {
    pub(super) fn new(what: &'static str, bytes: &'a [u8]) -> Der<'a> {
        Der { what, rest: bytes }
    }

    pub(super) fn error(what: &'static str, reason: impl Into<String>) -> KeyFormatError {
        KeyFormatError::Der {
            what,
            reason: reason.into(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub(super) fn finish(&self) -> Result<(), KeyFormatError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Der::error(
                self.what,
                format!("{} trailing bytes", self.rest.len()),
            ))
        }
    }

    /// The next element: (tag, contents).
    pub(super) fn any(&mut self) -> Result<(u8, &'a [u8]), KeyFormatError> {
        let truncated = || Der::error(self.what, "truncated");
        let (&tag, rest) = self.rest.split_first().ok_or_else(truncated)?;
        let (&first, mut rest) = rest.split_first().ok_or_else(truncated)?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return Err(Der::error(self.what, "bad length"));
            }
            let (digits, after) = rest.split_at(n);
            rest = after;
            digits
                .iter()
                .fold(0usize, |acc, &d| (acc << 8) | usize::from(d))
        };
        if rest.len() < len {
            return Err(truncated());
        }
        let (value, after) = rest.split_at(len);
        self.rest = after;
        Ok((tag, value))
    }

    pub(super) fn element(&mut self, tag: u8) -> Result<&'a [u8], KeyFormatError> {
        let (found, value) = self.any()?;
        if found != tag {
            return Err(Der::error(
                self.what,
                format!("expected tag {tag:#04x}, found {found:#04x}"),
            ));
        }
        Ok(value)
    }
}
