// Package policy decides who may call whom in the mesh: the Authorizer the
// inbound listener asks once mTLS has proven the caller's identity, the
// rules it evaluates, and NormalizePath, which fixes the one spelling of a
// request path that is both authorized and forwarded.
//
// # Rules
//
// A Rule names its callers (From), a destination service (To), an Action,
// and optionally HTTP conditions: methods, paths and headers, all of which
// must match. Identities arrive as strings in a Source; this package does
// not parse certificates.
//
// # Matching and precedence
//
// A rule applies to a request when one of its From entries matches the
// caller, its To matches the destination, and all its conditions match.
// A rule whose conditions do not match does not apply at all: the decision
// falls to the rules below it, then to the default. Of the rules that
// apply, the one of highest precedence decides; at equal precedence a deny
// beats an allow. No rule → the default action, with Decision.Rule
// "default".
//
// Precedence follows Consul's intentions table, where the destination
// counts before the source. From highest to lowest:
//
//	destination  source
//	exact        SPIFFE ID          spiffe://mesh.local/ns/prod/svc/web
//	exact        service name       web
//	exact        SPIFFE pattern     spiffe://mesh.local/ns/prod/*  (longer prefix first)
//	exact        *                  any authenticated caller
//	*            SPIFFE ID
//	*            service name
//	*            SPIFFE pattern     (longer prefix first)
//	*            *
//
// So "web → cart" outranks "* → cart", which outranks "web → *", which
// outranks "* → *", as Consul's 9, 7, 6 and 1. A SPIFFE pattern is Consul's
// "exact namespace, any name" row and ranks between the exact entries and
// "*". A full SPIFFE ID ranks above a bare service name because it also
// fixes trust domain and namespace. Each From entry of a rule ranks by
// itself: a rule with From [web, "*"] acts as two rules.
//
// Unlike Consul, the HTTP conditions do not change precedence and a
// non-matching rule falls through to lower ones instead of to the default:
// "allow web → cart for GET" plus "deny * → cart" denies web's POST.
//
// # Callers
//
// "*" means any authenticated workload. A caller without an identity
// (Source.Service and Source.SPIFFE both "") matches no rule, not even "*",
// and always gets the default action. With mutual TLS on, every caller
// that completes the handshake has an identity; with it off, the default
// is the only policy, so keep rules for mTLS deployments.
//
// # Paths
//
// NormalizePath turns a raw request path into its canonical form and
// refuses ambiguous ones (escaped slashes, backslashes, NULs, fragments,
// ".." above the root) with ErrAmbiguousPath, closing the bypass class of
// Envoy's CVE-2019-9901 and CVE-2021-29492. The proxy authorizes the
// normalized path and forwards that same path; rules' paths must be written
// in normalized form and are compared case-sensitively.
//
// # Concurrency
//
// A Policy is immutable and safe for concurrent use. A Table swaps whole
// Policies through an atomic pointer: Authorize never locks and never
// blocks, writers are serialized. Authorize does not allocate.
package policy
