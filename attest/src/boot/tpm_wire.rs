//! Reading TPM structures as the TPM marshals them (big-endian integers, `TPM2B` sized
//! buffers), for the verifier's checks of what a device sends: a quote's `TPMS_ATTEST`, an
//! attestation key's `TPMT_PUBLIC`. Every read is bounds-checked; a short input is refused
//! with the structure's name, never a panic.

use super::BootError;

/// A cursor over a marshalled structure.
pub(super) struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
    refuse: fn(String) -> BootError,
}

impl<'a> Reader<'a> {
    /// Reads `bytes` as the structure `what`; a refusal is made by `refuse`.
    pub(super) fn new(
        bytes: &'a [u8],
        what: &'static str,
        refuse: fn(String) -> BootError,
    ) -> Self {
        Self {
            rest: bytes,
            what,
            refuse,
        }
    }

    /// The next `n` bytes.
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], BootError> {
        if self.rest.len() < n {
            return Err((self.refuse)(format!("truncated {}", self.what)));
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }

    pub(super) fn u8(&mut self) -> Result<u8, BootError> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    pub(super) fn u16(&mut self) -> Result<u16, BootError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(super) fn u32(&mut self) -> Result<u32, BootError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A `TPM2B`: a 16-bit size, then that many bytes.
    pub(super) fn tpm2b(&mut self) -> Result<&'a [u8], BootError> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }

    /// Whether everything was read.
    pub(super) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], BootError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refuse(detail: String) -> BootError {
        BootError::QuoteRefused { detail }
    }

    #[test]
    fn reads_big_endian_and_sized_buffers() {
        let bytes = [0x01, 0x02, 0x03, 0x00, 0x02, 0xaa, 0xbb, 0x07];
        let mut r = Reader::new(&bytes, "X", refuse);
        assert_eq!(r.u16().unwrap(), 0x0102);
        assert_eq!(r.u8().unwrap(), 3);
        assert_eq!(r.tpm2b().unwrap(), &[0xaa, 0xbb]);
        assert!(!r.is_empty());
        assert_eq!(r.u8().unwrap(), 7);
        assert!(r.is_empty());
    }

    #[test]
    fn a_short_input_is_refused_by_name() {
        let mut r = Reader::new(&[0x00, 0x05, 0x01], "TPMS_ATTEST", refuse);
        let e = r.tpm2b().unwrap_err();
        assert!(e.to_string().contains("truncated TPMS_ATTEST"), "{e}");
        let mut r = Reader::new(&[0x01], "X", refuse);
        assert!(r.u32().is_err());
    }
}
