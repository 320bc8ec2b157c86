//! A minimal BER reader: enough to walk the CMS envelopes KMS returns, which use
//! indefinite lengths and constructed (chunked) OCTET STRINGs, as well as the DER that
//! other emitters produce. Limits on depth and size keep hostile input cheap.

/// Why BER input was refused. Byte offsets point into the input, for error messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BerError {
    /// The input ends before the element does; the value is the offset where more was needed.
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// A valid BER construct this reader does not handle (`what`: a multi-byte tag, or a
    /// length of more than 4 bytes), at offset `at`.
    #[error("unsupported {what} at byte {at}")]
    Unsupported {
        /// What the reader met.
        what: &'static str,
        /// Offset of the element in the input.
        at: usize,
    },
    /// Elements nest deeper than the limit carried in the variant (16 levels), so hostile
    /// input fails here instead of exhausting the stack.
    #[error("nesting deeper than {0} levels")]
    TooDeep(usize),
    /// An element's tag is not the one the caller asked for with [`Element::expect`].
    #[error("expected {expected} at byte {at}, found tag 0x{found:02x}")]
    UnexpectedTag {
        /// The ASN.1 type the caller expected, e.g. `SEQUENCE` or `OBJECT IDENTIFIER`.
        expected: &'static str,
        /// Offset of the element.
        at: usize,
        /// The identifier octet found instead.
        found: u8,
    },
    /// Any other malformation (a missing element, a string over its limit, an indefinite
    /// length on a primitive element); the text says which.
    #[error("{0}")]
    Invalid(String),
}

const MAX_DEPTH: usize = 16;

/// One decoded element. `content` is the raw content bytes for definite lengths; for
/// indefinite lengths it covers the nested elements (without the end-of-contents).
#[derive(Debug, Clone, Copy)]
pub struct Element<'a> {
    /// The identifier octet (single-byte tags only; CMS needs no others).
    pub tag: u8,
    /// The content octets; see the type's documentation for indefinite lengths.
    pub content: &'a [u8],
    /// Offset of this element in the outermost input, for error messages.
    pub at: usize,
}

/// Universal tag 2: INTEGER.
pub const TAG_INTEGER: u8 = 0x02;
/// Universal tag 4: OCTET STRING, primitive form (the constructed form has
/// [`CONSTRUCTED`] set too).
pub const TAG_OCTET_STRING: u8 = 0x04;
/// Universal tag 5: NULL.
pub const TAG_NULL: u8 = 0x05;
/// Universal tag 6: OBJECT IDENTIFIER.
pub const TAG_OID: u8 = 0x06;
/// Universal tag 16 with the constructed bit: SEQUENCE and SEQUENCE OF.
pub const TAG_SEQUENCE: u8 = 0x30;
/// Universal tag 17 with the constructed bit: SET and SET OF.
pub const TAG_SET: u8 = 0x31;
/// The constructed bit (0x20) of an identifier octet.
pub const CONSTRUCTED: u8 = 0x20;

impl<'a> Element<'a> {
    /// Whether the element is constructed, i.e. its content is nested elements.
    pub fn is_constructed(&self) -> bool {
        self.tag & CONSTRUCTED != 0
    }

    /// The nested elements of a constructed element.
    pub fn children(&self) -> Reader<'a> {
        Reader {
            input: self.content,
            base: self.at,
            depth: 1,
        }
    }

    /// This element if its tag is `tag`, otherwise [`BerError::UnexpectedTag`] naming
    /// `expected`.
    pub fn expect(self, tag: u8, expected: &'static str) -> Result<Element<'a>, BerError> {
        if self.tag == tag {
            Ok(self)
        } else {
            Err(BerError::UnexpectedTag {
                expected,
                at: self.at,
                found: self.tag,
            })
        }
    }

    /// The bytes of a string type, concatenating the chunks of a constructed encoding.
    pub fn string_bytes(&self, limit: usize) -> Result<Vec<u8>, BerError> {
        let mut out = Vec::new();
        self.collect_string(&mut out, limit, 0)?;
        Ok(out)
    }

    fn collect_string(
        &self,
        out: &mut Vec<u8>,
        limit: usize,
        depth: usize,
    ) -> Result<(), BerError> {
        if depth > MAX_DEPTH {
            return Err(BerError::TooDeep(MAX_DEPTH));
        }
        if !self.is_constructed() {
            if out.len() + self.content.len() > limit {
                return Err(BerError::Invalid(format!(
                    "string longer than {limit} bytes"
                )));
            }
            out.extend_from_slice(self.content);
            return Ok(());
        }
        let mut chunks = self.children();
        while let Some(chunk) = chunks.next_element()? {
            chunk.collect_string(out, limit, depth + 1)?;
        }
        Ok(())
    }
}

/// Reads consecutive elements.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    input: &'a [u8],
    base: usize,
    depth: usize,
}

impl<'a> Reader<'a> {
    /// A reader over the whole of `input`, at offset 0 and depth 0.
    pub fn new(input: &'a [u8]) -> Reader<'a> {
        Reader {
            input,
            base: 0,
            depth: 0,
        }
    }

    /// Whether no bytes are left to read.
    pub fn is_empty(&self) -> bool {
        self.input.is_empty()
    }

    /// The next element, or `None` at the end of input or at an end-of-contents marker.
    pub fn next_element(&mut self) -> Result<Option<Element<'a>>, BerError> {
        if self.input.is_empty() || self.input.starts_with(&[0, 0]) {
            return Ok(None);
        }
        let (element, used) = parse_element(self.input, self.base, self.depth)?;
        self.input = &self.input[used..];
        self.base += used;
        Ok(Some(element))
    }

    /// The next element, which must exist.
    pub fn required(&mut self, what: &'static str) -> Result<Element<'a>, BerError> {
        self.next_element()?
            .ok_or_else(|| BerError::Invalid(format!("missing {what}")))
    }
}

/// Parses one element at the start of `input`; returns it and the bytes it used.
fn parse_element(
    input: &[u8],
    base: usize,
    depth: usize,
) -> Result<(Element<'_>, usize), BerError> {
    if depth > MAX_DEPTH {
        return Err(BerError::TooDeep(MAX_DEPTH));
    }
    let tag = *input.first().ok_or(BerError::Truncated(base))?;
    if tag & 0x1f == 0x1f {
        return Err(BerError::Unsupported {
            what: "multi-byte tag",
            at: base,
        });
    }
    let first = *input.get(1).ok_or(BerError::Truncated(base + 1))?;
    let header;
    let content_len: usize;
    if first == 0x80 {
        // Indefinite length: constructed only; content runs to the matching EOC.
        if tag & CONSTRUCTED == 0 {
            return Err(BerError::Invalid(format!(
                "indefinite length on a primitive element at byte {base}"
            )));
        }
        header = 2;
        let mut offset = header;
        loop {
            let rest = &input[offset..];
            if rest.len() < 2 {
                return Err(BerError::Truncated(base + offset));
            }
            if rest[0] == 0 && rest[1] == 0 {
                let element = Element {
                    tag,
                    content: &input[header..offset],
                    at: base,
                };
                return Ok((element, offset + 2));
            }
            let (_, used) = parse_element(rest, base + offset, depth + 1)?;
            offset += used;
        }
    } else if first & 0x80 == 0 {
        header = 2;
        content_len = first as usize;
    } else {
        let count = (first & 0x7f) as usize;
        if count > 4 {
            return Err(BerError::Unsupported {
                what: "length over 4 bytes",
                at: base,
            });
        }
        let bytes = input
            .get(2..2 + count)
            .ok_or(BerError::Truncated(base + 2))?;
        header = 2 + count;
        content_len = bytes.iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
    }
    let end = header
        .checked_add(content_len)
        .ok_or(BerError::Truncated(base))?;
    let content = input
        .get(header..end)
        .ok_or(BerError::Truncated(base + header))?;
    Ok((
        Element {
            tag,
            content,
            at: base,
        },
        end,
    ))
}

/// Encodes an OID's content bytes from its dotted components, for comparisons.
pub fn oid(components: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut push = |mut value: u64| {
        let mut stack = vec![(value & 0x7f) as u8];
        value >>= 7;
        while value > 0 {
            stack.push(((value & 0x7f) as u8) | 0x80);
            value >>= 7;
        }
        out.extend(stack.iter().rev());
    };
    if components.len() >= 2 {
        push(components[0] * 40 + components[1]);
        for &c in &components[2..] {
            push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definite_and_indefinite_lengths_and_chunked_strings() {
        // SEQUENCE (indefinite) { OCTET STRING (constructed, indefinite) {"ab", "c"}, NULL }
        let ber = [
            0x30, 0x80, 0x24, 0x80, 0x04, 0x02, b'a', b'b', 0x04, 0x01, b'c', 0x00, 0x00, 0x05,
            0x00, 0x00, 0x00,
        ];
        let mut top = Reader::new(&ber);
        let seq = top
            .required("seq")
            .unwrap()
            .expect(TAG_SEQUENCE, "SEQUENCE")
            .unwrap();
        assert!(top.next_element().unwrap().is_none());
        let mut inner = seq.children();
        let s = inner.required("string").unwrap();
        assert_eq!(s.string_bytes(100).unwrap(), b"abc");
        assert!(s.string_bytes(2).is_err(), "limit enforced");
        inner
            .required("null")
            .unwrap()
            .expect(TAG_NULL, "NULL")
            .unwrap();
        assert!(inner.next_element().unwrap().is_none());
    }

    #[test]
    fn hostile_inputs_fail_cleanly() {
        for bad in [
            &[0x30, 0x85, 1, 2, 3, 4, 5][..],      // 5-byte length
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff], // length past the input
            &[0x30, 0x80, 0x04, 0x01],             // indefinite, never terminated
            &[0x04, 0x80, 0x00, 0x00],             // indefinite primitive
            &[0x1f, 0x01, 0x00],                   // multi-byte tag
            &[0x30],
        ] {
            assert!(Reader::new(bad).next_element().is_err(), "{bad:02x?}");
        }
        // 100 nested indefinite SEQUENCEs exceed the depth limit instead of the stack.
        let mut deep = Vec::new();
        for _ in 0..100 {
            deep.extend_from_slice(&[0x30, 0x80]);
        }
        for _ in 0..100 {
            deep.extend_from_slice(&[0, 0]);
        }
        assert_eq!(
            Reader::new(&deep).next_element().unwrap_err(),
            BerError::TooDeep(MAX_DEPTH)
        );
    }

    #[test]
    fn oid_encoding() {
        // 1.2.840.113549.1.7.3 (envelopedData)
        assert_eq!(
            oid(&[1, 2, 840, 113549, 1, 7, 3]),
            [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03]
        );
    }
}
