package fragments

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// The allowlist of section kinds, keywords, options, server settings and
// rule actions. Each entry reads its arguments with the parts in
// grammar.go, so that every sample expression, address and reference to
// another object is found and checked. The sample fetches and converters
// are in allowlist_exprs.go.

// sectionKeywords are the section kinds that have a keyword list, with it.
// backend is always allowed; the others only with ALLOW_SECTIONS. A
// fragment's servers may use resolvers the base config exports, never
// its own.
var sectionKeywords = map[string]map[string]args{
	"backend":  backendKeywords,
	"userlist": {"user": seq(word, options(userOptions, false)), "group": plain},
	"cache": {"total-max-size": num(1, maxCacheMB), "max-object-size": num(1, maxCacheMB<<20), "max-age": num(0, 365*86400),
		"process-vary": word, "max-secondary-entries": num(1, 4096)},
}

// maxCacheMB bounds a cache section's memory: HAProxy reserves all of it
// when it starts, whether anything is cached or not.
const maxCacheMB = 64

// userOptions are the settings of a userlist's user. HAProxy checks a
// password with crypt() on every request that carries one, and once for
// each user in haproxy -c: a slow hash (bcrypt, yescrypt, many rounds)
// stalls HAProxy past its watchdog or the check past its timeout.
var userOptions = map[string]args{
	"password": passwordHash, "insecure-password": word, "groups": word,
}

// fastHashRE are the crypt() hashes known to be quick: MD5-crypt, and
// SHA-crypt with at most the default 5,000 rounds.
var fastHashRE = regexp.MustCompile(`^\$(1|5|6)\$(?:rounds=([0-9]{1,4})\$)?[^$]+\$[./0-9A-Za-z]+$`)

func passwordHash(u *cursor) bool {
	if u.done() {
		return u.c.refuse("password needs a hash")
	}
	h := u.next()
	m := fastHashRE.FindStringSubmatch(h)
	if m != nil && m[2] != "" {
		if rounds, _ := strconv.Atoi(m[2]); rounds > 5000 {
			m = nil
		}
	}
	if m == nil {
		return u.c.refuse("password %q: only $1$, $5$ and $6$ crypt hashes with at most the default 5000 rounds (or insecure-password): a slow hash is computed on every request and stalls HAProxy", h)
	}
	return true
}

// SectionKinds lists the kinds besides backend that ALLOW_SECTIONS takes.
func SectionKinds() []string {
	return slices.DeleteFunc(slices.Sorted(maps.Keys(sectionKeywords)), func(k string) bool { return k == "backend" })
}

// neverKinds say why a section kind is never accepted from a fragment.
var neverKinds = map[string]string{
	"frontend":    "a frontend listens on the balancer's addresses",
	"listen":      "a listen section listens on the balancer's addresses",
	"peers":       "peers listen on the balancer and share stick tables between balancers",
	"mailers":     "mailers send mail from the balancer",
	"ring":        "rings hold the balancer's own event buffers and forward them to servers",
	"log-forward": "log-forward sections listen on the balancer",
	"http-errors": "http-errors sections read their pages from files on the balancer",
	"fcgi-app":    "FastCGI applications are the base config's to define",
	"resolvers":   "a tenant's own DNS server would point its servers anywhere at run time, the balancer's own services included; use a resolvers section the base config exports",
}

var backendKeywords = map[string]args{
	"acl":                   aclDefinition,
	"balance":               balance,
	"compression":           plain,
	"cookie":                plain,
	"default-server":        defaultServer,
	"description":           plain,
	"disabled":              none,
	"dynamic-cookie-key":    word,
	"enabled":               none,
	"errorloc":              plain,
	"errorloc302":           plain,
	"errorloc303":           plain,
	"filter":                filter,
	"force-persist":         needCond,
	"fullconn":              word,
	"hash-balance-factor":   word,
	"hash-type":             plain,
	"http-after-response":   rules("http-after-response", httpAfterResponseActions),
	"http-check":            httpCheck,
	"http-error":            options(replyOptions, false),
	"http-request":          rules("http-request", httpRequestActions),
	"http-response":         rules("http-response", httpResponseActions),
	"http-reuse":            word,
	"http-send-name-header": plain,
	"id":                    word,
	"ignore-persist":        needCond,
	"log":                   logGlobal,
	"max-keep-alive-queue":  word,
	"mode":                  word,
	"option":                option,
	"persist":               plain,
	"redirect":              plainThenCond,
	"retries":               word,
	"retry-on":              plain,
	"server":                server,
	"server-template":       serverTemplate,
	"srvtcpka-cnt":          word,
	"srvtcpka-idle":         word,
	"srvtcpka-intvl":        word,
	"stick":                 stick,
	"stick-table":           options(stickTableOptions, false),
	"tcp-check":             tcpCheck,
	"tcp-request":           tcpRules("tcp-request", tcpRequestActions),
	"tcp-response":          tcpRules("tcp-response", tcpResponseActions),
	"timeout":               plain,
	"use-server":            seq(word, needCond),
	"external-check":        externalCheck,
}

// backendOptions are the "option" names a backend may use.
var backendOptions = map[string]args{
	"abortonclose": none, "accept-invalid-http-response": none, "allbackups": none,
	"checkcache": none, "forwardfor": plain, "h1-case-adjust-bogus-server": none,
	"http-buffer-request": none, "http-keep-alive": none, "http-no-delay": none,
	"http-pretend-keepalive": none, "http-server-close": none, "httpchk": plain,
	"httpclose": none, "independent-streams": none, "ldap-check": none,
	"log-health-checks": none, "mysql-check": plain, "nolinger": none, "originalto": plain,
	"persist": none, "pgsql-check": plain, "prefer-last-server": none, "redis-check": none,
	"redispatch": plain, "smtpchk": plain, "splice-auto": none, "splice-request": none,
	"splice-response": none, "spop-check": none, "srvtcpka": none, "ssl-hello-chk": none,
	"tcp-check": none, "tcp-smart-connect": none, "http-restrict-req-hdr-names": word,
	"external-check": externalCheckOption,
}

func option(u *cursor) bool {
	name := u.next()
	p, ok := backendOptions[name]
	if !ok {
		return u.c.refuseWord(name, "option")
	}
	return p(u)
}

func externalCheck(u *cursor) bool {
	if !u.c.pol.has(extExternalCheck) {
		return u.c.refuseWord("external-check", "keyword")
	}
	return plain(u)
}

func externalCheckOption(u *cursor) bool {
	if !u.c.pol.has(extExternalCheck) {
		return u.c.refuseWord("external-check", "option")
	}
	return none(u)
}

// logGlobal takes "log global" only: other log targets send the backend's
// logs to any address, file or ring.
func logGlobal(u *cursor) bool {
	if u.peek() == "global" && len(u.words) == 2 {
		u.next()
		return true
	}
	return u.c.refuse("log %q is not allowed in fragments: only \"log global\" (the base config's log targets); other targets send logs to any address, file or ring", strings.Join(u.words[1:], " "))
}

// balanceAlgos are the algorithms "balance" takes, with whether a
// parenthesised argument follows (hdr(name), rdp-cookie(name), random(N)).
var balanceAlgos = map[string]bool{
	"roundrobin": false, "static-rr": false, "leastconn": false, "first": false, "source": false,
	"uri": false, "url_param": false, "hdr": true, "rdp-cookie": true, "random": true,
}

// maxRandomDraws bounds "balance random(N)": HAProxy 2.6 loops over the
// draws in each request, and a large N stalls a thread until its watchdog
// kills the process, every tenant with it.
const maxRandomDraws = 10

// balance takes an algorithm; "hash" takes a sample expression.
func balance(u *cursor) bool {
	algo := u.next()
	if algo == "hash" {
		return expr(u)
	}
	name, arg, paren := strings.Cut(algo, "(")
	takesArg, ok := balanceAlgos[name]
	switch {
	case !ok:
		return u.c.refuseWord(name, "balance algorithm")
	case paren && !takesArg:
		return u.c.refuse("balance %q takes no argument in parentheses", name)
	case name == "random" && paren:
		n, err := strconv.Atoi(strings.TrimSuffix(arg, ")"))
		if err != nil || n < 1 || n > maxRandomDraws || !strings.HasSuffix(arg, ")") {
			return u.c.refuse("balance %q: the number of draws must be 1 to %d", algo, maxRandomDraws)
		}
	}
	return plain(u)
}

// filter allows compression and the fragment's own caches.
func filter(u *cursor) bool {
	switch name := u.next(); name {
	case "compression":
		return none(u)
	case "cache":
		return ownCache(u)
	default:
		return u.c.refuseWord(name, "filter")
	}
}

func ownCache(u *cursor) bool {
	if u.done() {
		return u.c.refuse("%q needs a cache name", u.words[u.i-1])
	}
	return u.c.ownRef("cache", u.next(), "cache")
}

func ownTable(u *cursor) bool {
	if u.done() {
		return u.c.refuse("%q needs a table name", u.words[u.i-1])
	}
	return u.c.ownRef("backend", u.next(), "stick table")
}

// stick reads "stick on|match|store-request|store-response EXPR [table
// NAME] [if|unless COND]".
func stick(u *cursor) bool {
	switch kind := u.next(); kind {
	case "on", "match", "store-request", "store-response":
		return seq(expr, options(map[string]args{"table": ownTable}, true))(u)
	default:
		return u.c.refuseWord(kind, "stick")
	}
}

// stickTableOptions: "len" and "size" are read as plain numbers in range
// (an atol() that wraps makes a zero-length key the first write overruns).
var stickTableOptions = map[string]args{
	"type": word, "len": num(1, 1024), "size": sizeArg(maxTableEntries), "expire": timeArg(0), "nopurge": nil,
	"srvkey": word, "store": word,
}

// maxTableEntries bounds a stick table's size.
const maxTableEntries = 10_000_000

// aclDefinition reads "acl NAME CRITERION [flags] [--] [patterns]".
func aclDefinition(u *cursor) bool {
	if !word(u) {
		return false
	}
	if u.done() {
		return u.c.refuse("acl %q needs a criterion", u.words[1])
	}
	if !u.c.aclCriterion(u) {
		return false
	}
	for !u.done() {
		if !u.c.aclFlagOrPattern(u) {
			return false
		}
	}
	return true
}

// aclCriterion checks an ACL's criterion: an ACL keyword or a sample
// expression (which may continue into the next words).
func (c *checker) aclCriterion(u *cursor) bool {
	kw := idPrefix(u.peek())
	if !c.exprWords(u, true, "an ACL criterion") {
		return false
	}
	u.flags, u.regexes = true, strings.HasSuffix(kw, "_reg")
	return true
}

// aclFlags are the ACL flags a fragment may use. -f and -M load patterns
// from files; -u names a pattern list that other ACLs may share.
var aclFlags = map[string]bool{"-i": false, "-n": false, "-m": true}

// aclFlagOrPattern reads one flag (only before the first pattern, as
// HAProxy reads them) or one pattern.
func (c *checker) aclFlagOrPattern(u *cursor) bool {
	w := u.next()
	if !u.flags || !strings.HasPrefix(w, "-") {
		u.flags = false
		return !u.regexes || c.regex(w)
	}
	if w == "--" {
		u.flags = false
		return true
	}
	takesArg, ok := aclFlags[w]
	if !ok {
		if why, known := refusals[w]; known {
			return c.refuse("ACL flag %q is not allowed in fragments: %s", w, why)
		}
		return c.refuse("ACL flag %q is not allowed in fragments (allowed: -i, -n, -m METHOD, --)", w)
	}
	if takesArg {
		if u.done() {
			return c.refuse("ACL flag %q needs an argument", w)
		}
		u.regexes = u.next() == "reg"
	}
	return true
}

// addressArg takes one address.
func addressArg(ctx string, use addressUse, noPort bool) args {
	return func(u *cursor) bool {
		if u.done() {
			return u.c.refuse("%q needs an address", u.words[u.i-1])
		}
		return u.c.address(u.next(), ctx, use, noPort)
	}
}

// server reads "server NAME ADDRESS [settings]".
func server(u *cursor) bool {
	u.c.lineWeight = -1
	if !seq(word, addressArg("server address", useServer, false), options(serverKeywords, false))(u) {
		return false
	}
	return u.c.countServers(1)
}

// defaultServer reads "default-server [settings]": its weight is the
// section's default.
func defaultServer(u *cursor) bool {
	u.c.lineWeight = -1
	if !options(serverKeywords, false)(u) {
		return false
	}
	if u.c.lineWeight >= 0 {
		u.c.sec.defaultWeight = u.c.lineWeight
	}
	return true
}

// serverTemplate reads "server-template PREFIX COUNT ADDRESS [settings]",
// COUNT being N or LOW-HIGH.
func serverTemplate(u *cursor) bool {
	u.c.lineWeight = -1
	if !seq(word, templateCount, addressArg("server-template address", useServer, false), options(serverKeywords, false))(u) {
		return false
	}
	return u.c.countServers(u.c.templateServers)
}

func templateCount(u *cursor) bool {
	if u.done() {
		return u.c.refuse("server-template needs a count")
	}
	v := u.next()
	low, high, isRange := strings.Cut(v, "-")
	lo, err1 := strconv.Atoi(low)
	hi, err2 := lo, error(nil)
	if isRange {
		hi, err2 = strconv.Atoi(high)
	} else {
		lo = 1
	}
	if err1 != nil || err2 != nil || lo < 0 || hi < lo {
		return u.c.refuse("server-template count %q: write N or LOW-HIGH", v)
	}
	if hi-lo+1 > maxServers {
		return u.c.refuse("server-template count %q: at most %d servers per line (each costs every tenant's check time and memory)", v, maxServers)
	}
	u.c.templateServers = hi - lo + 1
	return true
}

// serverKeywords are the settings of server and default-server lines.
var serverKeywords = map[string]args{
	// no argument
	"agent-check": nil, "allow-0rtt": nil, "backup": nil, "check": nil, "check-send-proxy": nil,
	"check-ssl": nil, "check-via-socks4": nil, "disabled": nil, "enabled": nil,
	"force-sslv3": nil, "force-tlsv10": nil, "force-tlsv11": nil, "force-tlsv12": nil, "force-tlsv13": nil,
	"no-agent-check": nil, "no-backup": nil, "no-check": nil, "no-check-send-proxy": nil, "no-check-ssl": nil,
	"no-send-proxy": nil, "no-send-proxy-v2": nil, "no-send-proxy-v2-ssl": nil, "no-send-proxy-v2-ssl-cn": nil,
	"no-ssl": nil, "no-ssl-reuse": nil, "no-sslv3": nil, "no-tfo": nil, "no-tls-tickets": nil,
	"no-tlsv10": nil, "no-tlsv11": nil, "no-tlsv12": nil, "no-tlsv13": nil, "non-stick": nil,
	"send-proxy": nil, "send-proxy-v2": nil, "send-proxy-v2-ssl": nil, "send-proxy-v2-ssl-cn": nil,
	"ssl": nil, "ssl-reuse": nil, "stick": nil, "tfo": nil, "tls-tickets": nil,
	// one plain argument
	"agent-inter": timeArg(minCheckMS), "agent-port": portArg, "agent-send": word, "alpn": word, "check-alpn": word,
	"check-proto": word, "check-sni": word, "ciphers": word, "ciphersuites": word, "cookie": word,
	"downinter": timeArg(minCheckMS), "error-limit": num(1, 1000), "fall": num(1, 1000), "fastinter": timeArg(minCheckMS),
	"id": num(1, 1<<31-1), "inter": timeArg(minCheckMS),
	"log-proto": word, "max-reuse": num(0, 1<<31-1), "maxconn": num(0, 1<<20), "maxqueue": num(0, 1<<20), "minconn": num(0, 1<<20),
	"npn": word, "observe": word, "on-error": word, "on-marked-down": word, "on-marked-up": word,
	"pool-low-conn": num(0, 1<<20), "pool-max-conn": num(0, 1<<20), "pool-purge-delay": timeArg(0), "port": portArg,
	"proto": word, "proxy-v2-options": word, "redir": word, "resolve-net": word, "resolve-opts": word,
	"resolve-prefer": word, "rise": num(1, 1000), "slowstart": timeArg(0), "ssl-max-ver": word, "ssl-min-ver": word,
	"tcp-ut": timeArg(0), "verify": word, "verifyhost": word, "weight": weightArg, "ws": word,
	// arguments that are checked
	"addr":       addressArg("check address", useServer, true),
	"agent-addr": addressArg("agent address", useServer, true),
	"socks4":     addressArg("socks4 proxy", useServer, false),
	"ca-file":    caFile,
	"init-addr":  initAddr,
	"resolvers":  resolversRef,
	"sni":        sni,
	"track":      track,
}

// minCheckMS is the shortest health-check interval: a thousand servers
// checked every millisecond keep both of the balancer's cores busy.
const minCheckMS = 500

// Budgets of one fragment: servers (a server-template line counts its
// servers) and their weights, which consistent hashing multiplies into
// ring points; 100 lines of 1,000 servers take haproxy -c over a minute.
const (
	maxServers     = 1000
	maxWeightUnits = 20000
)

// weightArg is a server's weight (0 to 256, HAProxy's range), which the
// line's servers count with.
func weightArg(u *cursor) bool {
	if !num(0, 256)(u) {
		return false
	}
	w, _ := strconv.Atoi(u.words[u.i-1])
	u.c.lineWeight = w
	return true
}

// countServers adds n servers of the current line to the fragment's
// budget; the weight is the line's own, else its section's default-server.
func (c *checker) countServers(n int) bool {
	weight := c.sec.defaultWeight
	if c.lineWeight >= 0 {
		weight = c.lineWeight
	}
	c.servers += n
	c.weights += n * max(weight, 1)
	switch {
	case c.servers > maxServers:
		return c.refuse("this line brings the fragment to %d servers; a fragment may have at most %d (each costs every tenant's check time and memory)", c.servers, maxServers)
	case c.weights > maxWeightUnits:
		return c.refuse("this line brings the fragment's server weights to %d (servers times weight); at most %d", c.weights, maxWeightUnits)
	}
	return true
}

// caFile takes only the system's CA store: any path is a file on the
// balancer that HAProxy reads as root.
func caFile(u *cursor) bool {
	if u.peek() == "@system-ca" {
		u.next()
		return true
	}
	return u.c.refuse("ca-file %q: a fragment may only use \"ca-file @system-ca\" (the system's CA store); a path names a file on the balancer that HAProxy reads as root", u.peek())
}

// initAddr takes "last", "libc", "none" and IP addresses, which HAProxy
// uses as the server's address when resolution fails.
func initAddr(u *cursor) bool {
	if u.done() {
		return u.c.refuse("init-addr needs a value")
	}
	for _, m := range strings.Split(u.next(), ",") {
		if m == "last" || m == "libc" || m == "none" {
			continue
		}
		if !u.c.address(m, "init-addr address", useServer, true) {
			return false
		}
	}
	return true
}

func resolversRef(u *cursor) bool {
	if u.done() {
		return u.c.refuse("resolvers needs a name")
	}
	return u.c.readRef("resolvers", u.next(), "resolvers")
}

// sni is a sample expression in one word.
func sni(u *cursor) bool {
	if u.done() {
		return u.c.refuse("sni needs a sample expression")
	}
	rest, _, ok := u.c.exprText(u.next(), false)
	if ok && rest != "" {
		return u.c.refuse("unexpected %q after the sni expression", rest)
	}
	return ok
}

// track ties the server's state to another server: only of this fragment.
func track(u *cursor) bool {
	if u.done() {
		return u.c.refuse("track needs a server")
	}
	v := u.next()
	if be, _, found := strings.Cut(v, "/"); found {
		return u.c.readRef("backend", be, fmt.Sprintf("track %q names a server of backend", v))
	}
	return true
}

// replyOptions are the arguments of deny, tarpit, return and http-error:
// everything but the page files (file, lf-file, errorfile, errorfiles).
var replyOptions = map[string]args{
	"status": word, "deny_status": word, "content-type": word, "default-errorfiles": nil,
	"string": word, "lf-string": word, "hdr": seq(word, word),
}

var reply = options(replyOptions, true)

// timeoutOrExpr takes a time ("30s") or a sample expression.
var timeRE = regexp.MustCompile(`^[0-9]+(us|ms|s|m|h|d)?$`)

func timeoutOrExpr(u *cursor) bool {
	if timeRE.MatchString(u.peek()) {
		u.next()
		return true
	}
	return expr(u)
}

// action is a rule action: its arguments, which end in an optional
// condition unless said otherwise.
type action = args

// varAction reads "set-var(NAME[,...]) EXPR", "set-var-fmt(NAME) FMT" and
// "unset-var(NAME)": the variable is written.
func varAction(value args) action {
	return func(u *cursor) bool {
		name, params, _ := strings.Cut(u.words[u.i-1], "(")
		params = strings.TrimSuffix(params, ")")
		v, _, _ := strings.Cut(params, ",")
		if !u.c.variable(v, true, name) {
			return false
		}
		if value != nil && !value(u) {
			return false
		}
		return optCond(u)
	}
}

// delHeader reads "del-header NAME [-m METHOD]"; with -m reg the name is
// a regular expression.
func delHeader(u *cursor) bool {
	if !word(u) {
		return false
	}
	name := u.words[u.i-1]
	if u.peek() == "-m" {
		u.next()
		if !word(u) {
			return false
		}
		if u.words[u.i-1] == "reg" && !u.c.regex(name) {
			return false
		}
	}
	return optCond(u)
}

// trackSC reads "track-scN EXPR [table NAME]".
func trackSC(u *cursor) bool {
	n, _ := strconv.Atoi(strings.TrimPrefix(u.words[u.i-1], "track-sc"))
	if !u.c.counterFree(n, u.words[u.i-1]) {
		return false
	}
	return seq(expr, options(map[string]args{"table": ownTable}, true))(u)
}

// counterRE is how a fragment writes the stick counter of an sc-* action:
// HAProxy also reads "sc-inc-gpc0" as counter 0 and is lenient with what
// surrounds the number, so only the plain form is accepted.
var counterRE = regexp.MustCompile(`^[a-z0-9-]+\((?:[0-9]+,)?([0-2])\)$`)

// counterAction reads sc-inc-gpc0(N), sc-inc-gpc(IDX,N), sc-set-gpt0(N)
// VALUE and sc-set-gpt(IDX,N) VALUE: they act on stick counter N.
func counterAction(indexed bool, value args) action {
	return func(u *cursor) bool {
		w := u.words[u.i-1]
		m := counterRE.FindStringSubmatch(w)
		if m == nil || indexed != strings.Contains(w, ",") {
			form := "(N)"
			if indexed {
				form = "(IDX,N)"
			}
			name, _, _ := strings.Cut(w, "(")
			return u.c.refuse("%q: write %s%s with the stick counter N as 0, 1 or 2", w, name, form)
		}
		n, _ := strconv.Atoi(m[1])
		if !u.c.counterFree(n, w) {
			return false
		}
		if value != nil && !value(u) {
			return false
		}
		return optCond(u)
	}
}

var cond args = optCond

// actions shared by several rule sets.
var (
	headerActions = map[string]action{
		"add-header": plainThenCond, "set-header": plainThenCond, "del-header": delHeader,
		"replace-header": seq(word, regexArg, word, cond), "replace-value": seq(word, regexArg, word, cond),
	}
	varActions = map[string]action{
		"set-var": varAction(expr), "set-var-fmt": varAction(word), "unset-var": varAction(nil),
	}
	counterActions = map[string]action{
		"sc-inc-gpc0": counterAction(false, nil), "sc-inc-gpc1": counterAction(false, nil),
		"sc-inc-gpc": counterAction(true, nil), "sc-set-gpt0": counterAction(false, intOrExpr),
		"sc-set-gpt": counterAction(true, intOrExpr),
	}
	trackActions = map[string]action{"track-sc0": trackSC, "track-sc1": trackSC, "track-sc2": trackSC}
	tuneActions  = map[string]action{
		"set-log-level": plainThenCond, "set-nice": seq(intOrExpr, cond), "set-tos": seq(intOrExpr, cond),
		"silent-drop": cond,
	}
)

func merge(sets ...map[string]action) map[string]action {
	out := map[string]action{}
	for _, s := range sets {
		for k, v := range s {
			out[k] = v
		}
	}
	return out
}

var httpRequestActions = merge(headerActions, varActions, counterActions, trackActions, tuneActions, map[string]action{
	"allow": cond, "auth": plainThenCond, "cache-use": seq(ownCache, cond), "deny": reply,
	"disable-l7-retry": cond, "early-hint": plainThenCond, "normalize-uri": plainThenCond,
	"redirect": plainThenCond, "reject": cond, "replace-path": seq(regexArg, word, cond), "replace-pathq": seq(regexArg, word, cond),
	"replace-uri": seq(regexArg, word, cond), "return": reply, "set-method": plainThenCond, "set-path": plainThenCond,
	"set-pathq": plainThenCond, "set-query": plainThenCond, "set-uri": plainThenCond,
	"set-priority-class": seq(expr, cond), "set-priority-offset": seq(expr, cond),
	"set-src": seq(expr, cond), "set-src-port": seq(expr, cond), "set-timeout": seq(word, timeoutOrExpr, cond),
	"strict-mode": plainThenCond, "tarpit": reply, "wait-for-body": plainThenCond, "wait-for-handshake": cond,
})

var httpResponseActions = merge(headerActions, varActions, counterActions, trackActions, tuneActions, map[string]action{
	"allow": cond, "cache-store": seq(ownCache, cond), "deny": reply, "redirect": plainThenCond,
	"return": reply, "set-status": plainThenCond, "strict-mode": plainThenCond, "wait-for-body": plainThenCond,
})

var httpAfterResponseActions = merge(headerActions, varActions, map[string]action{
	"allow": cond, "set-status": plainThenCond, "strict-mode": plainThenCond,
})

var tcpRequestActions = merge(varActions, counterActions, trackActions, tuneActions, map[string]action{
	"accept": cond, "reject": cond, "set-priority-class": seq(expr, cond), "set-priority-offset": seq(expr, cond),
	"set-src": seq(expr, cond), "set-src-port": seq(expr, cond),
})

var tcpResponseActions = merge(varActions, counterActions, tuneActions, map[string]action{
	"accept": cond, "reject": cond, "close": cond,
})

// rules reads "KEYWORD ACTION [arguments] [if|unless COND]".
func rules(keyword string, actions map[string]action) args {
	return func(u *cursor) bool {
		if u.done() {
			return u.c.refuse("%s needs an action", keyword)
		}
		w := u.next()
		name, _, _ := strings.Cut(w, "(")
		if u.c.pol.has(extLua) && (strings.HasPrefix(name, "lua.") || name == "use-service" && strings.HasPrefix(u.peek(), "lua.")) {
			return plainThenCond(u)
		}
		p, ok := actions[name]
		if !ok {
			return u.c.refuseWord(name, keyword+" action")
		}
		u.ctx = keyword + " " + name
		return p(u)
	}
}

// tcpRules reads "tcp-request|tcp-response content ACTION ..." and
// "... inspect-delay TIME"; connection and session rules are a frontend's.
func tcpRules(keyword string, actions map[string]action) args {
	return func(u *cursor) bool {
		switch w := u.next(); w {
		case "inspect-delay":
			return word(u)
		case "content":
			return rules(keyword+" content", actions)(u)
		default:
			return u.c.refuseWord(w, keyword)
		}
	}
}

// checkConnect are the arguments of "http-check connect" and "tcp-check
// connect".
var checkConnect = options(map[string]args{
	"default": nil, "port": checkPort, "addr": addressArg("check address", useServer, true),
	"send-proxy": nil, "via-socks4": nil, "ssl": nil, "sni": word, "alpn": word,
	"linger": nil, "proto": word, "comment": word,
}, false)

// checkPort is a check's port: HAProxy 2.6 takes a number or a sample
// expression, evaluated at every check.
func checkPort(u *cursor) bool {
	if u.done() {
		return u.c.refuse("port needs a value")
	}
	if n, err := strconv.ParseUint(u.peek(), 10, 16); err == nil {
		u.c.usePort(uint16(n))
		u.next()
		return true
	}
	return expr(u)
}

// portArg is a server's check or agent port: a number HAProxy connects to
// on the server's address.
func portArg(u *cursor) bool {
	if u.done() {
		return u.c.refuse("%q needs a port", u.words[u.i-1])
	}
	if n, ok := haproxyPort(u.next()); ok {
		u.c.usePort(n)
	}
	return true
}

// checkExpect reads "http-check expect" and "tcp-check expect": options,
// then a match and its pattern. status-code takes a sample expression.
func checkExpect(u *cursor) bool {
	for !u.done() {
		switch w := u.next(); w {
		case "status-code":
			if !expr(u) {
				return false
			}
		case "min-recv", "comment", "ok-status", "error-status", "tout-status", "on-success", "on-error":
			if !word(u) {
				return false
			}
		case "rstatus", "rstring", "rbinary":
			if !regexArg(u) {
				return false
			}
		case "-m":
			if !word(u) {
				return false
			}
			if u.words[u.i-1] == "reg" && !regexArg(u) {
				return false
			}
		}
	}
	return true
}

// healthCheck reads the http-check and tcp-check rules.
func healthCheck(keyword string, simple map[string]args) args {
	return func(u *cursor) bool {
		w := u.next()
		name, _, _ := strings.Cut(w, "(")
		switch {
		case name == "connect":
			return checkConnect(u)
		case name == "expect":
			return checkExpect(u)
		case varActions[name] != nil:
			return varActions[name](u)
		case simple[name] != nil:
			return simple[name](u)
		}
		return u.c.refuseWord(name, keyword)
	}
}

var httpCheck = healthCheck("http-check", map[string]args{
	"send": plain, "send-state": none, "disable-on-404": none, "comment": word,
})

var tcpCheck = healthCheck("tcp-check", map[string]args{
	"send": plain, "send-lf": plain, "send-binary": plain, "send-binary-lf": plain, "comment": word,
})

// refusals say why a keyword, action, option, fetch or converter that is
// not on the allowlist is dangerous. Anything refused and not named here is
// refused as "not on the allowlist".
var refusals = map[string]string{
	"env":                         "it reads the balancer's environment",
	"hostname":                    "it reveals the balancer's host name",
	"last_rule_file":              "it reveals the path of the balancer's configuration",
	"debug":                       "it writes into HAProxy's own event rings",
	"capture-req":                 "it writes into the base frontend's capture slots",
	"capture-res":                 "it writes into the base frontend's capture slots",
	"capture":                     "it writes into the base frontend's capture slots",
	"nbsrv":                       "as a converter it reads the state of any backend, by a name computed at run time",
	"srv_queue":                   "as a converter it reads the state of any server, by a name computed at run time",
	"jwt_verify":                  "it reads key files on the balancer",
	"file":                        "it reads a file on the balancer as root; use string or lf-string",
	"lf-file":                     "it reads a file on the balancer as root; use string or lf-string",
	"errorfile":                   "it reads a file on the balancer as root; use http-request return with string",
	"errorfiles":                  "it uses the error pages of an http-errors section, which fragments cannot define",
	"crt":                         "it reads a certificate and key file on the balancer as root",
	"crl-file":                    "it reads a file on the balancer as root",
	"-f":                          "it loads patterns from a file on the balancer, read as root",
	"-M":                          "it loads a map file from the balancer, read as root",
	"-u":                          "it names a pattern list other ACLs may share",
	"parse-resolv-conf":           "it reads the balancer's /etc/resolv.conf",
	"set-map":                     "it writes entries into a map file by name, shared with every tenant (the host map among them)",
	"del-map":                     "it deletes entries from a map file by name, shared with every tenant (the host map among them)",
	"add-acl":                     "it writes entries into an ACL file by name, shared with every tenant",
	"del-acl":                     "it deletes entries from an ACL file by name, shared with every tenant",
	"use-service":                 "it runs one of HAProxy's services (the Prometheus exporter shows every tenant's data)",
	"set-dst":                     "it makes the balancer connect anywhere, its own loopback services included",
	"set-dst-port":                "it makes the balancer connect anywhere, its own loopback services included",
	"set-mark":                    "it changes how the balancer routes the connection",
	"do-resolve":                  "it makes the balancer send DNS queries for any name",
	"send-spoe-group":             "it talks to the base config's SPOE agents",
	"spoe":                        "it reads a configuration file on the balancer and talks to agents",
	"trace":                       "it writes into HAProxy's output",
	"opentracing":                 "it talks to tracing agents the base config defines",
	"ot-group":                    "it talks to tracing agents the base config defines",
	"source":                      "it binds the connection to the balancer's own addresses",
	"usesrc":                      "it makes the balancer connect from the client's address",
	"namespace":                   "it connects from one of the balancer's network namespaces",
	"stats":                       "it serves, and with admin changes, the statistics of every tenant",
	"email-alert":                 "it sends mail through the base config's mailers",
	"dispatch":                    "it connects to an address outside any server line",
	"transparent":                 "it makes the balancer connect to wherever the client connected: the balancer itself",
	"use-fcgi-app":                "it uses the base config's FastCGI applications",
	"bind":                        "a fragment never listens on the balancer",
	"external-check":              "it runs a program on the balancer; the operator can allow it with HAPROXY_CONFIG_ALLOW_DIRECTIVES=" + extExternalCheck,
	"peers":                       "it shares the table with the base config's peers",
	"load-server-state-from-file": "it reads a state file on the balancer",
	"lua-load":                    "it loads Lua code into HAProxy",
	"lua-load-per-thread":         "it loads Lua code into HAProxy",
	"lua-prepend-path":            "it tells HAProxy where to load Lua code from",
	"command":                     "it runs a program as root",
	"setenv":                      "it changes HAProxy's environment",
	"presetenv":                   "it changes HAProxy's environment",
	"resetenv":                    "it changes HAProxy's environment",
	"unsetenv":                    "it changes HAProxy's environment",
	"insecure-fork-wanted":        "it lets HAProxy start programs",
	"server-state-file-name":      "it reads a state file on the balancer",
}
