// Package policy decides who may call whom, in the mesh and at its edge:
// the Authorizer the inbound listener asks once mTLS has proven the
// caller's identity, and the edge asks once a route's authentication has
// verified a JWT or an API key; the rules it evaluates; and NormalizePath,
// which fixes the one spelling of a request path that is both authorized
// and forwarded.
//
// # Rules
//
// A Rule names its callers (From), a destination (To: a service in the
// mesh, a route at the edge), an Action, and optionally HTTP conditions:
// methods, paths and headers, all of which must match. Identities arrive
// as strings and claims in a Source; this package parses neither
// certificates nor tokens. One rule language serves both directions of
// traffic: a From entry is
//
//	"*"                                  any authenticated caller
//	web                                  a service name (from a SPIFFE ID)
//	spiffe://mesh.local/ns/prod/svc/web  a SPIFFE ID
//	spiffe://mesh.local/ns/prod/*        a SPIFFE pattern
//	jwt:sub=alice                        a verified JWT with that subject
//	jwt:groups=admin                     a verified JWT whose claim is, or lists, the value
//	jwt:scope=orders.write               one whose space-separated scope claim holds the word
//	jwt:*                                any verified JWT
//	apikey:partners/acme                 the key acme of the API key set partners
//	apikey:partners/*                    any key of the set partners
//	cidr:10.0.0.0/8                      a client address in the network
//
// Claim names are letters, digits, '_', '-' and '.'; only string and
// list-of-string claim values match. A cidr prefix is written without
// host bits ("cidr:192.0.2.7/32" for one address).
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
//	exact        exact principal    spiffe://mesh.local/ns/prod/svc/web, jwt:sub=alice, apikey:partners/acme
//	exact        service name       web
//	exact        pattern            spiffe://mesh.local/ns/prod/*, jwt:groups=admin, cidr:10.0.0.0/8, apikey:partners/*, jwt:*
//	exact        *                  any authenticated caller
//	*            exact principal
//	*            service name
//	*            pattern
//	*            *
//
// So "web → cart" outranks "* → cart", which outranks "web → *", which
// outranks "* → *", as Consul's 9, 7, 6 and 1. A SPIFFE pattern is Consul's
// "exact namespace, any name" row and ranks between the exact entries and
// "*". A full SPIFFE ID ranks above a bare service name because it also
// fixes trust domain and namespace; a JWT subject and an API key name one
// caller as a SPIFFE ID does and rank with it. Each From entry of a rule
// ranks by itself: a rule with From [web, "*"] acts as two rules.
//
// The pattern row is ordered within itself, from highest to lowest:
// SPIFFE patterns, the longer prefix first; JWT claims (jwt:<claim>=
// <value>); cidr entries, the longer prefix first; API key sets
// (apikey:<set>/*); jwt:*. A claim picks some of the verified callers,
// a network the callers of one place, a key set or jwt:* every caller
// with such a credential. So "deny cidr:203.0.113.0/24" beats
// "allow jwt:*" and "allow *", but not "allow jwt:sub=alice" or
// "allow jwt:groups=admin". Entries of the same kind and specificity are
// at equal precedence.
//
// Unlike Consul, the HTTP conditions do not change precedence and a
// non-matching rule falls through to lower ones instead of to the default:
// "allow web → cart for GET" plus "deny * → cart" denies web's POST.
//
// # Callers
//
// "*" means any authenticated caller: a workload with a SPIFFE ID, or at
// the edge a caller with a verified JWT or API key. A caller without an
// identity matches no rule, not even "*", except cidr: entries, which
// match on the client address alone; otherwise it gets the default
// action. So a deny by cidr holds for every caller from that network,
// and an allow by cidr lets anonymous callers from it in. With mutual TLS
// on, every caller that completes the handshake has an identity; with it
// off, the default is the only policy, so keep rules for mTLS
// deployments.
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
// blocks, writers are serialized. Authorize does not allocate, for mesh
// and edge callers alike.
package policy
