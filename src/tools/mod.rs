//! Operator tools that read what allowdns wrote: `suggest` turns an audit log
//! into a policy to review, `report` into a page to read.

pub mod report;
pub mod suggest;
