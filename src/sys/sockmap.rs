//! STUB (replaced by the kernel layer at merge).
#![allow(missing_docs, clippy::missing_errors_doc, unused_variables)]
use std::io;
use std::os::fd::AsFd;
#[derive(Debug)]
pub struct Sockmap;
impl Sockmap {
    pub fn new(capacity: u32) -> Result<Sockmap, io::Error> {
        Err(io::Error::other("stub"))
    }
    pub fn cookie(s: &impl AsFd) -> io::Result<u64> {
        Err(io::Error::other("stub"))
    }
    pub fn arm(&self, src: &impl AsFd, src_cookie: u64, dst: &impl AsFd) -> io::Result<()> {
        Err(io::Error::other("stub"))
    }
    pub fn disarm(&self, src_cookie: u64) -> io::Result<()> {
        Ok(())
    }
    pub fn forget(&self, src_cookie: u64) -> io::Result<()> {
        Ok(())
    }
    pub fn kick(&self, s: &impl AsFd) {}
}
