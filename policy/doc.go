// Package policy decides who may talk to whom: the Authorizer, its rules
// and path normalization, applied on the inbound side once mTLS proves the
// caller's identity. It is empty until the zero-trust issue lands; the
// folder exists so the package layout of DESIGN.md is fixed from the start.
package policy
