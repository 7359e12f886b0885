package fragments

import (
	"fmt"
	"regexp/syntax"
	"strconv"
	"strings"
)

// This file reads the arguments of the keywords a fragment may use the way
// HAProxy 2.6 reads them, far enough to find every place where HAProxy
// would evaluate a sample expression, read a log-format string, connect to
// an address or look up another object by name. The lists of what is
// allowed are in allowlist.go; this is only the machinery.

// cursor walks the words of one line.
type cursor struct {
	c       *checker
	words   []string
	i       int
	flags   bool   // ACL flags may still come (before the first pattern)
	regexes bool   // the ACL's patterns are regular expressions
	ctx     string // what the words belong to, for messages ("server", "http-request return")
}

func (u *cursor) context() string {
	if u.ctx != "" {
		return u.ctx
	}
	return u.words[0]
}

func (u *cursor) done() bool { return u.i >= len(u.words) }

func (u *cursor) peek() string {
	if u.done() {
		return ""
	}
	return u.words[u.i]
}

func (u *cursor) next() string {
	w := u.peek()
	u.i++
	return w
}

// atCond reports whether the cursor is at the "if"/"unless" that starts a
// rule's condition.
func (u *cursor) atCond() bool { w := u.peek(); return w == "if" || w == "unless" }

// args reads the rest of a line after a keyword. It returns false once it
// has refused something; the line is not read further then.
type args func(u *cursor) bool

// none takes no argument.
func none(u *cursor) bool {
	if !u.done() {
		return u.c.refuse("%q takes no argument here", u.words[u.i-1])
	}
	return true
}

// plain takes any words: values HAProxy reads as numbers, names, strings,
// regular expressions or log-format strings (whose expressions every word
// is scanned for anyway, see checker.check).
func plain(u *cursor) bool { u.i = len(u.words); return true }

// plainThenCond takes any words up to an optional condition.
func plainThenCond(u *cursor) bool {
	for !u.done() && !u.atCond() {
		u.next()
	}
	return optCond(u)
}

// optCond reads an optional "if|unless CONDITION" that must end the line.
func optCond(u *cursor) bool {
	if u.done() {
		return true
	}
	if !u.atCond() {
		return u.c.refuse("unexpected %q: only a condition (if/unless ...) may follow here", u.peek())
	}
	u.next()
	return condition(u)
}

// needCond reads a condition that must be there.
func needCond(u *cursor) bool {
	if !u.atCond() {
		return u.c.refuse("%q needs a condition (if/unless ...)", u.words[u.i-1])
	}
	return optCond(u)
}

// seq reads parts one after the other.
func seq(parts ...args) args {
	return func(u *cursor) bool {
		for _, p := range parts {
			if !p(u) {
				return false
			}
		}
		return true
	}
}

// word takes one word, whatever it is (a name, a number, a string).
func word(u *cursor) bool {
	if u.done() {
		return u.c.refuse("%q needs an argument", u.words[u.i-1])
	}
	u.next()
	return true
}

// expr reads a sample expression, which may continue into the next words.
func expr(u *cursor) bool {
	if u.done() {
		return u.c.refuse("%q needs a sample expression", u.words[u.i-1])
	}
	return u.c.expression(u)
}

// num takes a plain decimal number from lo to hi. HAProxy reads many
// numbers with atoi() or atol() into narrower types, so "-1" or a number
// past the type wraps around (a stick-table key of "len -1" is zero bytes
// long, and the first key written into it overruns the heap): only plain
// numbers in a sane range are known safe.
func num(lo, hi uint64) args {
	return func(u *cursor) bool {
		if u.done() {
			return u.c.refuse("%q needs a number", u.words[u.i-1])
		}
		w := u.next()
		v, err := strconv.ParseUint(w, 10, 64)
		if err != nil || v < lo || v > hi {
			return u.c.refuse("%s %q: write a plain number from %d to %d", u.words[u.i-2], w, lo, hi)
		}
		return true
	}
}

// timeUnits are HAProxy's time suffixes, in milliseconds (no suffix:
// milliseconds).
var timeUnits = map[string]float64{"": 1, "us": 0.001, "ms": 1, "s": 1000, "m": 60000, "h": 3600000, "d": 86400000}

// parseTime reads an HAProxy time ("500", "2s", "100ms") in milliseconds.
func parseTime(w string) (float64, bool) {
	n := 0
	for n < len(w) && '0' <= w[n] && w[n] <= '9' {
		n++
	}
	unit, ok := timeUnits[w[n:]]
	v, err := strconv.ParseUint(w[:n], 10, 32)
	return float64(v) * unit, ok && err == nil && n > 0
}

// timeArg takes an HAProxy time of at least minMS milliseconds, up to a
// day.
func timeArg(minMS float64) args {
	return func(u *cursor) bool {
		if u.done() {
			return u.c.refuse("%q needs a time", u.words[u.i-1])
		}
		w := u.next()
		ms, ok := parseTime(w)
		if !ok || ms < minMS || ms > 86400000 {
			return u.c.refuse("%s %q: write a time from %gms to 1d (such as 2s)", u.words[u.i-2], w, minMS)
		}
		return true
	}
}

// sizeArg takes a plain number with an optional k, m or g suffix (powers
// of 1024), up to max.
func sizeArg(max uint64) args {
	return func(u *cursor) bool {
		if u.done() {
			return u.c.refuse("%q needs a size", u.words[u.i-1])
		}
		w := u.next()
		digits, mult := w, uint64(1)
		if n := len(w); n > 1 {
			switch w[n-1] {
			case 'k', 'K':
				digits, mult = w[:n-1], 1<<10
			case 'm', 'M':
				digits, mult = w[:n-1], 1<<20
			case 'g', 'G':
				digits, mult = w[:n-1], 1<<30
			}
		}
		v, err := strconv.ParseUint(digits, 10, 32)
		if err != nil || v*mult > max {
			return u.c.refuse("%s %q: write a size up to %d (k, m and g suffixes allowed)", u.words[u.i-2], w, max)
		}
		return true
	}
}

// maxRegexes bounds the regular expressions of one fragment: each costs
// HAProxy about 85 KB once compiled.
const maxRegexes = 200

// regex checks a regular expression HAProxy will run on requests. PCRE
// backtracks, and one request can make a nested repetition such as
// (a|a?)+ run long enough for HAProxy's watchdog to abort the process,
// every tenant with it; so only what Go's RE2 syntax reads is accepted,
// with no repetition, optional part or alternation inside a repetition,
// and at most maxUnbounded unbounded repetitions.
func (c *checker) regex(s string) bool {
	c.regexes++
	if c.regexes > maxRegexes {
		return c.refuse("regular expression %q: a fragment may have at most %d", s, maxRegexes)
	}
	if len(s) > 1024 {
		return c.refuse("regular expression %q: at most 1024 characters", s[:64]+"...")
	}
	re, err := syntax.Parse(s, syntax.Perl)
	if err != nil {
		return c.refuse("regular expression %q: not one this check can vet (%v); lookarounds, back-references and possessive forms are not accepted", s, err)
	}
	if backtracks(re, false) {
		return c.refuse("regular expression %q: a repetition or an alternation inside a repetition can make one request run long enough to stop HAProxy for every tenant; rewrite it without nesting", s)
	}
	if n := unbounded(re); n > maxUnbounded {
		return c.refuse("regular expression %q: %d unbounded repetitions (*, +, {n,}); at most %d", s, n, maxUnbounded)
	}
	return true
}

// maxUnbounded bounds the unbounded repetitions of one regular expression.
const maxUnbounded = 3

// repeats reports whether re repeats what it holds more than once.
func repeats(re *syntax.Regexp) bool {
	return re.Op == syntax.OpStar || re.Op == syntax.OpPlus || re.Op == syntax.OpRepeat && (re.Max == -1 || re.Max > 1)
}

// backtracks reports a repetition, an optional part or an alternation
// inside a repetition.
func backtracks(re *syntax.Regexp, inRepeat bool) bool {
	if inRepeat && (repeats(re) || re.Op == syntax.OpQuest || re.Op == syntax.OpAlternate) {
		return true
	}
	for _, sub := range re.Sub {
		if backtracks(sub, inRepeat || repeats(re)) {
			return true
		}
	}
	return false
}

// unbounded counts the unbounded repetitions in re.
func unbounded(re *syntax.Regexp) int {
	n := 0
	if re.Op == syntax.OpStar || re.Op == syntax.OpPlus || re.Op == syntax.OpRepeat && re.Max == -1 {
		n++
	}
	for _, sub := range re.Sub {
		n += unbounded(sub)
	}
	return n
}

// regexArg takes a regular expression.
func regexArg(u *cursor) bool {
	if u.done() {
		return u.c.refuse("%q needs a regular expression", u.words[u.i-1])
	}
	return u.c.regex(u.next())
}

// intOrExpr takes an integer, or else a sample expression.
func intOrExpr(u *cursor) bool {
	if _, err := strconv.ParseInt(u.peek(), 10, 64); err == nil {
		u.next()
		return true
	}
	return expr(u)
}

// options reads "keyword [argument]" pairs in any order, up to an optional
// condition when cond is set; a keyword not in kws is refused.
func options(kws map[string]args, cond bool) args {
	return func(u *cursor) bool {
		for !u.done() {
			if cond && u.atCond() {
				return optCond(u)
			}
			kw := u.next()
			p, ok := kws[kw]
			if !ok {
				return u.c.refuseWord(kw, u.context()+" option")
			}
			if p != nil && !p(u) {
				return false
			}
		}
		return true
	}
}

// condition reads an ACL condition to the end of the line: named ACLs
// (harmless: they are the proxy's own), "!", "||", "or", and anonymous
// ACLs in braces, whose fetch is checked like any other.
func condition(u *cursor) bool {
	if u.done() {
		return u.c.refuse("%q needs a condition", u.words[u.i-1])
	}
	for !u.done() {
		// HAProxy drops leading "!" from every word before it looks for
		// "{", so "!{" opens an anonymous ACL too
		w := strings.TrimLeft(u.next(), "!")
		if w != "{" {
			continue
		}
		if !u.c.aclCriterion(u) {
			return false
		}
		for !u.done() && u.peek() != "}" {
			if !u.c.aclFlagOrPattern(u) {
				return false
			}
		}
		if u.done() {
			return u.c.refuse("anonymous ACL without its closing \"}\"")
		}
		u.next()
	}
	return true
}

// isIDChar is HAProxy's is_idchar(): the characters of fetch and converter
// names.
func isIDChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '.' || c == '_' || c == '-' || c == '+' || c == ':'
}

func idPrefix(s string) string {
	n := 0
	for n < len(s) && isIDChar(s[n]) {
		n++
	}
	return s[:n]
}

// call is one fetch or converter with its arguments.
type call struct {
	name string
	args []string
	rest string // what follows the closing parenthesis
}

// splitCall reads "name(arg,arg)" as make_arg_list() does: arguments end
// at a ',' or ')' outside quotes; quotes are removed, backslash escapes
// \\ \<space> \" \' \r \n \t are decoded. ok is false for an unterminated
// argument list.
func splitCall(s string) (c call, ok bool) {
	c.name = idPrefix(s)
	rest := s[len(c.name):]
	if !strings.HasPrefix(rest, "(") {
		c.rest = rest
		return c, true
	}
	in := rest[1:]
	var cur strings.Builder
	squote, dquote := false, false
	for i := 0; i < len(in); i++ {
		ch := in[i]
		switch {
		case ch == '"' && !squote:
			dquote = !dquote
		case ch == '\'' && !dquote:
			squote = !squote
		case ch == '\\' && !squote && i+1 < len(in):
			switch n := in[i+1]; n {
			case '\\', ' ', '"', '\'':
				cur.WriteByte(n)
				i++
			case 'r':
				cur.WriteByte('\r')
				i++
			case 'n':
				cur.WriteByte('\n')
				i++
			case 't':
				cur.WriteByte('\t')
				i++
			default:
				cur.WriteByte(ch)
			}
		case !squote && !dquote && (ch == ',' || ch == ')'):
			c.args = append(c.args, cur.String())
			cur.Reset()
			if ch == ')' {
				c.rest = in[i+1:]
				if len(c.args) == 1 && c.args[0] == "" {
					c.args = nil
				}
				return c, true
			}
		default:
			cur.WriteByte(ch)
		}
	}
	return c, false
}

// expression checks a sample expression starting at the cursor, as
// sample_parse_expr() reads it: a fetch with its arguments, then
// converters, each after a ',' in the same word or, once a word ends, in
// the next word when that word starts with a converter's name. HAProxy
// takes such a word as a converter wherever an expression stands, so a
// word that looks like an option to the rule may in fact run code; every
// one of them is checked.
func (c *checker) expression(u *cursor) bool { return c.exprWords(u, false, "a sample expression") }

// exprWords reads the expression at the cursor and the converters that
// follow it in the next words; inACL tells it is an ACL's criterion.
func (c *checker) exprWords(u *cursor, inACL bool, what string) bool {
	rest, kw, ok := c.exprText(u.next(), inACL)
	for {
		if !ok {
			return false
		}
		if rest != "" {
			return c.refuse("unexpected %q after %s (converters follow a comma)", rest, what)
		}
		if kw || u.done() || !isConverterName(idPrefix(u.peek())) {
			return true // converters of an ACL keyword stay in its word
		}
		rest, ok = c.converters("," + u.next())
	}
}

// exprText checks the fetch and converters at the start of s and returns
// what follows them, which in a log-format string is the closing ']'.
// aclKW tells the criterion of an ACL was an ACL keyword (path_beg,
// hdr_dom, ...), which HAProxy accepts only there; such a criterion takes
// converters in its own word only.
func (c *checker) exprText(s string, inACL bool) (rest string, aclKW, ok bool) {
	fc, ok := splitCall(s)
	if !ok {
		return "", false, c.refuse("unterminated argument list in %q", s)
	}
	if fc.name == "" {
		return "", false, c.refuse("%q is not a sample expression", s)
	}
	name := fc.name
	if alias, isKW := aclKeywords[name]; isKW && inACL {
		name, aclKW = alias, true
	}
	spec, known := fetches[name]
	if !known {
		if strings.HasPrefix(name, "lua.") && c.pol.has(extLua) {
			rest, ok = c.converters(fc.rest)
			return rest, false, ok
		}
		return "", false, c.refuseFetch(fc.name)
	}
	if !c.fetchAllowed(name, fc, spec) {
		return "", false, false
	}
	rest, ok = c.converters(fc.rest)
	return rest, aclKW, ok
}

// converters checks the converters at the start of s, each after one or
// more commas, and returns what follows them. A trailing comma is fine:
// the converters may go on in the next word.
func (c *checker) converters(s string) (string, bool) {
	for strings.HasPrefix(s, ",") {
		s = strings.TrimLeft(s, ",")
		if s == "" {
			return "", true
		}
		cc, ok := splitCall(s)
		if !ok {
			return "", c.refuse("unterminated argument list in %q", s)
		}
		if cc.name == "" {
			return "", c.refuse("%q is not a converter", s)
		}
		if !c.converterAllowed(cc) {
			return "", false
		}
		s = cc.rest
	}
	return s, true
}

// fetchAllowed checks a fetch and its arguments against the allowlist.
func (c *checker) fetchAllowed(name string, fc call, spec fetchSpec) bool {
	if spec.counter != counterNone {
		n, ok := fetchCounter(name, fc, spec)
		if !ok {
			return c.refuse("fetch %q: write its stick counter as 0, 1 or 2", name)
		}
		if !c.counterFree(n, name) {
			return false
		}
	}
	return c.checkArgs("fetch", name, fc.args, spec.args)
}

func (c *checker) converterAllowed(cc call) bool {
	if cc.name == "regsub" && len(cc.args) > 0 && !c.regex(cc.args[0]) {
		return false
	}
	spec, ok := converterList[cc.name]
	if !ok {
		if strings.HasPrefix(cc.name, "lua.") && c.pol.has(extLua) {
			return true
		}
		return c.refuse("converter %q is not allowed in fragments%s", cc.name, reason(cc.name))
	}
	return c.checkArgs("converter", cc.name, cc.args, spec.args)
}

// checkArgs checks the arguments of a fetch or converter that name other
// objects: tables, backends, servers, user lists, variables.
func (c *checker) checkArgs(what, name string, values []string, kinds []argKind) bool {
	if kinds == nil {
		return true
	}
	if len(values) > len(kinds) {
		return c.refuse("%s %q takes at most %d arguments", what, name, len(kinds))
	}
	for i, v := range values {
		if !c.argument(kinds[i], v, fmt.Sprintf("%s %q", what, name)) {
			return false
		}
	}
	return true
}

// argument checks one argument of a given kind.
func (c *checker) argument(k argKind, v, ctx string) bool {
	switch k {
	case argPlain, argInt:
		return true
	case argTable:
		return c.ownRef("backend", v, ctx+" names stick table")
	case argBackend:
		return c.readRef("backend", v, ctx+" names backend")
	case argServer:
		be, _, found := strings.Cut(v, "/")
		if !found {
			return true // a server of the proxy the rule is in
		}
		return c.readRef("backend", be, ctx+" names a server of backend")
	case argUserlist:
		return c.readRef("userlist", v, ctx+" names user list")
	case argVarRead:
		return c.variable(v, false, ctx)
	case argVarOrValue:
		if looksLikeVar(v) {
			return c.variable(v, false, ctx)
		}
		return true
	case argVarSet:
		return c.variable(v, true, ctx)
	case argCounter:
		return true // checked with the fetch, see counterFree
	}
	return c.refuse("%s: argument %q is not allowed", ctx, v)
}

// varScopes are the variable scopes a fragment may use. "proc" is shared by
// every proxy, and "sess" by every backend the requests of one client
// connection reach (keep-alive, HTTP/2, a CDN's pooled connections): both
// would let one tenant read or write another's.
var varScopes = map[string]bool{"txn": true, "req": true, "res": true, "check": true}

func looksLikeVar(v string) bool {
	scope, _, ok := strings.Cut(v, ".")
	return ok && (varScopes[scope] || scope == "proc" || scope == "sess")
}

// variable checks a variable name: its scope, and that a fragment does not
// set what the base config owns.
func (c *checker) variable(v string, set bool, ctx string) bool {
	scope, name, ok := strings.Cut(v, ".")
	switch {
	case !ok || name == "":
		return c.refuse("%s: %q is not a variable name (scope.name, with scope one of txn, req, res, check)", ctx, v)
	case scope == "proc":
		return c.refuse("%s: variable %q is in the proc scope, which every proxy shares; use txn, req or res", ctx, v)
	case scope == "sess":
		return c.refuse("%s: variable %q is in the sess scope, which every backend the same client connection reaches shares; use txn, req or res", ctx, v)
	case !varScopes[scope]:
		return c.refuse("%s: %q has no variable scope a fragment may use (txn, req, res, check)", ctx, v)
	case set && (strings.HasPrefix(name, reservedPrefix) || c.pol.Balancer.Vars[v]):
		return c.refuse("%s: variable %q belongs to the base config, which uses it; pick another name", ctx, v)
	}
	return true
}

// logFormat checks every sample expression in a log-format string, the
// way parse_logformat_string() finds them: "%[expr]" or "%{flags}[expr]";
// "%%" is a literal percent sign and "%name" a log variable.
func (c *checker) logFormat(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			continue
		}
		j := i + 1
		if j < len(s) && s[j] == '%' {
			i = j
			continue
		}
		if j < len(s) && s[j] == '{' {
			end := strings.IndexByte(s[j:], '}')
			if end < 0 {
				return c.refuse("unterminated %%{ in log-format string %q", s)
			}
			j += end + 1
		}
		if j >= len(s) || s[j] != '[' {
			i = j - 1
			continue
		}
		rest, _, ok := c.exprText(s[j+1:], false)
		if !ok {
			return false
		}
		if !strings.HasPrefix(rest, "]") {
			return c.refuse("sample expression in %q not closed by \"]\"", s)
		}
		i = len(s) - len(rest)
	}
	return true
}

// fetchCounter returns the stick counter a fetch uses, -1 when it names
// none; ok is false when the counter is not written plainly as 0, 1 or 2
// (HAProxy reads a wrapped-around number as one of them).
func fetchCounter(name string, fc call, spec fetchSpec) (n int, ok bool) {
	if spec.counter == counterInName {
		return int(name[2] - '0'), true
	}
	for i, k := range spec.args {
		if k == argCounter && i < len(fc.args) {
			v := fc.args[i]
			if len(v) != 1 || v[0] < '0' || v[0] > '2' {
				return -1, false
			}
			return int(v[0] - '0'), true
		}
	}
	return -1, true
}

// counterFree refuses a stick counter the base config tracks: through it a
// fragment would read and change the base's table entries.
func (c *checker) counterFree(n int, what string) bool {
	switch {
	case n < 0 || n >= len(c.pol.Balancer.Counters):
		return true // not a counter HAProxy has: haproxy -c refuses it
	case c.pol.Balancer.Counters[n]:
		return c.refuse("%q uses stick counter %d, which the base config tracks; use another counter (0 to 2)", what, n)
	case !c.tracked[n]:
		return c.refuse("%q uses stick counter %d, which this fragment does not track itself (http-request track-sc%d ...): what it holds would be someone else's", what, n, n)
	}
	return true
}
