//! Operator tools that read what allowdns wrote: `suggest` turns an audit log
//! into a policy to review.

pub mod suggest;
