//! The meta model in the seed's vocabulary: rings, kinds, their specs, the rules every write
//! must keep, and the versioned wire types of the API. Pure data and pure functions: this crate
//! must never do I/O, spawn tasks or read the clock except through callers.

#![warn(missing_docs)]

pub mod api;
pub mod dag;
pub mod kinds;
mod object;
mod ring;
mod validate;

pub use kinds::{Kind, Spec};
pub use object::{Object, ObjectMeta};
pub use ring::{Ring, RingError};
pub use validate::{
    FieldError, LABEL_PATTERN, OnDelete, Reference, RingRule, Target, label_schema, labels_schema,
    optional_label_schema, validate_label, validate_labels,
};
