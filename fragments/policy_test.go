package fragments

import (
	"context"
	"errors"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"haproxy-config/assemble"
	"haproxy-config/internal/testkit"
)

// testBalancer is a balancer like the tests' installations: the default
// base's listeners on loopback ports, one public interface address.
var testBalancer = Balancer{
	Listeners: []Listener{
		{Addr: netip.MustParseAddr("127.0.0.1"), Port: 8404},
		{Addr: netip.MustParseAddr("127.0.0.1"), Port: 8402},
		{Port: 80},
		{Port: 443},
	},
	LocalAddrs: []netip.Addr{netip.MustParseAddr("203.0.113.7")},
	Vars:       map[string]bool{"txn.hc_backend": true},
	BaseNames:  map[string]bool{"https": true, "http": true},
	Hostname:   "vm-7",
}

func checkOne(conf string, pol Policy) (assemble.Problems, []assemble.HostRef) {
	lines, sections := assemble.Scan([]byte(conf))
	return CheckConf(assemble.Location{Fragment: "t", File: "t.cfg"}, lines, sections, pol)
}

// TestPolicyRefuses: each fragment is refused at its line, with a message
// naming the word; lines before it pass.
func TestPolicyRefuses(t *testing.T) {
	cases := []struct {
		name, conf string
		line       int
		msg        string
	}{
		// what HAProxy reads before any keyword
		{"environment in double quotes", "backend a\n    http-request return string \"$HOME\"\n", 2, `"$HOME" inside double quotes is expanded`},
		{"braced expansion", "backend a\n    server s \"${IP}\":80\n", 2, "variable IP"},
		{"default spells a section", "backend a\n\"${X-program}\" p\n    command /bin/sh\n", 2, `"${X-program}"`},
		{"word-splitting expansion", "backend a\n    \"${X[*]}\"\n", 2, `"${X[*]}"`},
		{"pseudo-variable", "backend a\n    http-request return string \"$.FILE\"\n", 2, "variable .FILE"},
		{"dollar HAProxy cannot read", "backend a\n    http-request return string \"5$\"\n", 2, "HAProxy cannot read this line: forbidden first char"},
		{"unmatched quote", "backend a\n    http-request return string \"x\n", 2, "unmatched quote"},
		{"bad hex escape", "backend a\n    mode \\x4\n", 2, "hexadecimal"},
		{"conditional block", "backend a\n.if defined(HAPROXY_MWORKER)\n    server s 10.0.0.1:80\n.endif\n", 2, `".if" is an HAProxy configuration directive`},
		{"quoted directive", "backend a\n    \".diag\" x\n", 2, `".diag"`},
		{"escaped directive", "backend a\n\\x2eelse\n", 2, `".else"`},
		{"scope line", "backend a\n[scope]\n", 2, `starting with "["`},
		{"empty first word", "backend a\n\"\" server s unix@/x\n", 2, "starts with an empty word"},
		{"empty middle word", "backend a\n    server s 10.0.0.1:80 \"\" source 127.0.0.1\n", 2, "empty word in the middle"},
		{"too many words", "backend a\n    description" + strings.Repeat(" w", 64) + "\n", 2, "too many words"},
		// sections
		{"global", "global\n    stats socket ipv4@127.0.0.1:9999 level admin\n", 1, "global sections change every tenant's settings"},
		{"defaults", "defaults\n    mode tcp\n", 1, "defaults sections"},
		{"program", "program p\n    command /bin/sh -c id\n", 1, "program sections run commands as root"},
		{"frontend", "frontend f\n    bind :81\n", 1, "a frontend listens"},
		{"listen", "listen l\n    bind :81\n", 1, "a listen section listens"},
		{"peers", "peers p\n", 1, "peers listen"},
		{"ring", "ring r\n", 1, "rings hold"},
		{"http-errors", "http-errors e\n", 1, "read their pages from files"},
		{"userlist not allowed", "userlist u\n", 1, "userlist sections are not allowed"},
		{"hex-spelled section", "gl\\x6fbal\n", 1, "global sections"},
		{"quoted section", "front\"end\" f\n", 1, "a frontend listens"},
		{"named defaults", "backend a from tenant_defaults\n", 1, `unexpected "from"`},
		{"reserved name", "backend haproxy_config_x\n", 1, "reserved for the base config"},
		{"keyword outside any section", "    server s 10.0.0.1:80\nbackend a\n", 1, "outside any section"},
		// keywords, options, settings
		{"unknown keyword", "backend a\n    bogus 1\n", 2, `keyword "bogus" is not on the allowlist`},
		{"uppercase keyword", "backend a\n    SERVER s 10.0.0.1:80\n", 2, `keyword "SERVER"`},
		{"errorfile", "backend a\n    errorfile 503 /etc/shadow\n", 2, `"errorfile" is not allowed`},
		{"external check", "backend a\n    option external-check\n", 2, `option "external-check"`},
		{"escaped external check", "backend a\n    option external\\x2dcheck\n", 2, `option "external-check"`},
		{"no before another keyword", "backend a\n    no server\n", 2, `"no" may only come before "option"`},
		{"transparent", "backend a\n    option transparent\n", 2, `option "transparent"`},
		{"log target", "backend a\n    log 127.0.0.1:514 local0\n", 2, "only \"log global\""},
		{"stats", "backend a\n    stats enable\n", 2, `keyword "stats" is not allowed`},
		{"source", "backend a\n    source 0.0.0.0 usesrc clientip\n", 2, `keyword "source" is not allowed`},
		{"server crt", "backend a\n    server s 10.0.0.1:443 ssl crt /etc/ssl/private/x.pem\n", 2, `server option "crt"`},
		{"server ca-file path", "backend a\n    server s 10.0.0.1:443 ssl ca-file /etc/ssl/private/ca.pem\n", 2, `ca-file "/etc/ssl/private/ca.pem"`},
		{"server namespace", "backend a\n    server s 10.0.0.1:80 namespace host\n", 2, `server option "namespace"`},
		{"stick table peers", "backend a\n    stick-table type ip size 1k peers mesh\n", 2, `stick-table option "peers"`},
		{"spoe filter", "backend a\n    filter spoe config /etc/shadow\n", 2, `filter "spoe"`},
		{"resolv.conf", "backend a\n    server s example.com:80 resolvers r\n", 2, `resolvers "r"`},
		// actions and their arguments
		{"return file", "backend a\n    http-request return status 200 file /etc/shadow\n", 2, `http-request return option "file"`},
		{"return lf-file", "backend a\n    http-request return lf-file /etc/shadow\n", 2, `"lf-file"`},
		{"deny errorfiles", "backend a\n    http-request deny errorfiles e\n", 2, `"errorfiles"`},
		{"http-error file", "backend a\n    http-error status 503 file /etc/shadow\n", 2, `"file"`},
		{"set-map on the host map", "backend a\n    http-request set-map(hosts.map) %[req.hdr(host)] a\n", 2, `action "set-map"`},
		{"add-acl", "backend a\n    http-request add-acl(/tmp/x) a\n", 2, `action "add-acl"`},
		{"use-service", "backend a\n    http-request use-service prometheus-exporter\n", 2, `action "use-service"`},
		{"set-dst", "backend a\n    http-request set-dst str(127.0.0.1)\n", 2, `action "set-dst"`},
		{"do-resolve", "backend a\n    http-request do-resolve(txn.ip,r) str(x)\n", 2, `action "do-resolve"`},
		{"lua action", "backend a\n    http-request lua.evil\n", 2, "it runs Lua code"},
		{"capture", "backend a\n    http-request capture req.hdr(x) len 10\n", 2, `action "capture"`},
		// expressions
		{"env fetch in log-format", "backend a\n    http-request set-header X %[env(HOME)]\n", 2, `sample fetch "env"`},
		{"env fetch with flags", "backend a\n    http-request return lf-string \"%{+Q}[env(PATH)]\"\n", 2, `sample fetch "env"`},
		{"env fetch as an expression", "backend a\n    http-request set-var(txn.x) env(HOME)\n", 2, `sample fetch "env"`},
		{"env in an ACL", "backend a\n    acl x env(HOME) -m found\n", 2, `sample fetch "env"`},
		{"env in an anonymous ACL", "backend a\n    http-request deny if { env(HOME) -m found }\n", 2, `sample fetch "env"`},
		{"negated anonymous ACL", "backend a\n    http-request deny if !{ env(HOME) -m found }\n", 2, `sample fetch "env"`},
		{"map converter", "backend a\n    http-request set-var(txn.x) req.hdr(host),map(/etc/shadow)\n", 2, `converter "map"`},
		{"converter in the next word", "backend a\n    http-request set-var(txn.x) req.hdr(host), map(/etc/shadow)\n", 2, `converter "map"`},
		{"converter after a blank", "backend a\n    http-request set-var(txn.x) req.hdr(host) map(/etc/shadow)\n", 2, `converter "map"`},
		{"converter in an ACL", "backend a\n    acl x req.hdr(host) map(/etc/shadow) -m found\n", 2, `converter "map"`},
		{"debug converter", "backend a\n    http-request set-header X %[src,debug]\n", 2, `converter "debug"`},
		{"hidden in quotes in an argument", "backend a\n    http-request set-header X %[str(\"]\"),env(HOME)]\n", 2, `converter "env"`},
		{"acl -f", "backend a\n    acl x path -f /etc/shadow\n", 2, `ACL flag "-f"`},
		{"acl -M", "backend a\n    acl x path -M -f /etc/x\n", 2, `ACL flag "-M"`},
		{"hostname fetch", "backend a\n    http-request set-header X %[hostname]\n", 2, `sample fetch "hostname"`},
		{"sni expression", "backend a\n    server s 10.0.0.1:443 ssl sni env(HOME)\n", 2, `sample fetch "env"`},
		{"balance hash", "backend a\n    balance hash env(HOME)\n", 2, `sample fetch "env"`},
		{"status-code expression", "backend a\n    http-check expect status-code env(X) status 200\n", 2, `sample fetch "env"`},
		// objects of others
		{"proc variable", "backend a\n    http-request set-var(proc.x) str(1)\n", 2, `variable "proc.x" is in the proc scope`},
		{"proc variable read", "backend a\n    http-request set-header X %[var(proc.x)]\n", 2, `"proc.x"`},
		{"base variable", "backend a\n    http-request set-var(txn.hc_backend) str(b)\n", 2, `variable "txn.hc_backend" belongs to the base config`},
		{"reserved variable", "backend a\n    http-request set-var(txn.haproxy_config_x) str(b)\n", 2, "belongs to the base config"},
		{"other backend's table", "backend a\n    http-request track-sc0 src table other\n", 2, `stick table "other", which this fragment does not define`},
		{"other backend's state", "backend a\n    http-request deny if { nbsrv(other) lt 1 }\n", 2, `backend "other", which neither this fragment defines nor the base config exports`},
		{"other server", "backend a\n    http-request deny if { srv_is_up(other/s1) }\n", 2, `backend "other"`},
		{"other userlist", "backend a\n    http-request auth if !{ http_auth(admins) }\n", 2, `user list "admins"`},
		{"other cache", "backend a\n    http-request cache-use c\n", 2, `cache "c"`},
		{"frontend argument", "backend a\n    http-request deny if { fe_conn(https) gt 1 }\n", 2, `argument "https" is not allowed`},
		{"track another server", "backend a\n    server s 10.0.0.1:80 track other/s\n", 2, `track "other/s"`},
		{"counter the fragment does not track", "backend a\n    http-request sc-inc-gpc0(0)\n", 2, "which this fragment does not track itself"},
		{"counter fetch it does not track", "backend a\n    http-request deny if { sc0_http_req_rate gt 10 }\n", 2, "stick counter 0"},
		// addresses
		{"runtime API socket", "backend a\n    server s unix@/run/haproxy-config/admin.sock\n", 2, "a unix socket on the balancer"},
		{"socket path", "backend a\n    server s /run/haproxy-master.sock\n", 2, "a path is a unix socket"},
		{"abstract socket", "backend a\n    server s abns@x\n", 2, "a unix socket on the balancer"},
		{"inherited socket", "backend a\n    server s fd@3\n", 2, "a socket HAProxy inherited"},
		{"uppercase prefix", "backend a\n    server s UNIX@/x\n", 2, `"UNIX@" address prefix`},
		{"loopback", "backend a\n    server s 127.0.0.1:22\n", 2, "a loopback address"},
		{"status frontend", "backend a\n    server s 127.0.0.1:8404\n", 2, "the balancer listens there itself (127.0.0.1:8404)"},
		{"loopback IPv6", "backend a\n    server s [::1]:22\n", 2, "a loopback address"},
		{"mapped loopback", "backend a\n    server s [::ffff:127.0.0.1]:22\n", 2, "a loopback address"},
		{"compatible loopback", "backend a\n    server s [::127.0.0.2]:22\n", 2, "an IPv4 address inside an IPv6 one"},
		{"resolvers of its own", "resolvers dns\n    nameserver ns1 192.0.2.53:53\n", 1, "a tenant's own DNS server would point its servers anywhere"},
		{"session variable", "backend a\n    http-request set-var(sess.token) req.hdr(authorization)\n", 2, `variable "sess.token" is in the sess scope`},
		{"session variable read", "backend a\n    http-request set-header X %[var(sess.token)]\n", 2, "sess scope"},
		{"stick-table key length that wraps", "backend a\n    stick-table type string len -1 size 1k\n", 2, `len "-1": write a plain number from 1 to 1024`},
		{"stick-table key length too large", "backend a\n    stick-table type string len 4294967295 size 1k\n", 2, "from 1 to 1024"},
		{"stick-table size too large", "backend a\n    stick-table type ip size 1g\n", 2, `size "1g"`},
		{"cache too large", "cache c\n    total-max-size 4095\n", 2, `total-max-size "4095"`},
		{"nested repetition", "backend a\n    http-request replace-value x-a ^(a|a?)+$ z\n", 2, "a repetition or an alternation inside a repetition"},
		{"alternation in a repetition", "backend a\n    acl bad path_reg ^(a|aa)+$\n", 2, "a repetition or an alternation inside a repetition"},
		{"regex after -m reg", "backend a\n    acl bad path -m reg (x+)+y\n", 2, "a repetition or an alternation inside a repetition"},
		{"regex in regsub", `backend a
    http-request set-header X "%[path,regsub(\"(.*)*\",x)]"
`, 2, "a repetition or an alternation inside a repetition"},
		{"regex in a health check", "backend a\n    option httpchk\n    http-check expect rstring (a*)*b\n", 3, "a repetition or an alternation inside a repetition"},
		{"regex in del-header", "backend a\n    http-request del-header (xa|ya)+ -m reg\n", 2, "a repetition or an alternation inside a repetition"},
		{"back-reference", "backend a\n    http-request replace-path (a)\\1 /\n", 2, "not one this check can vet"},
		{"optional part in a repetition", "backend a\n    acl bad path_reg ^(ab?)+$\n", 2, "a repetition or an alternation inside a repetition"},
		{"unbounded repetitions", "backend a\n    acl bad path_reg ^a*b*c*d*$\n", 2, "4 unbounded repetitions"},
		{"bcrypt password", "userlist u\n    user alice password $2b$17$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234\n", 2, "only $1$, $5$ and $6$ crypt hashes"},
		{"many rounds", "userlist u\n    user alice password $6$rounds=5001$salt$abc\n", 2, "only $1$, $5$ and $6$"},
		{"fast check interval", "backend a\n    server s 10.0.0.1:80 check inter 1ms\n", 2, `inter "1ms": write a time from 500ms`},
		{"weight past HAProxy's range", "backend a\n    server s 10.0.0.1:80 weight 257\n", 2, `weight "257"`},
		{"too many servers", "backend a\n    server-template s 1000 10.0.0.1:80\n    server extra 10.0.0.2:80\n", 3, "at most 1000"},
		{"too much weight", "backend a\n    hash-type consistent\n    server-template s 1000 10.0.0.1:80 weight 256\n", 3, "server weights"},
		{"default weight counts", "backend a\n    default-server weight 100\n    server-template s 300 10.0.0.1:80\n", 3, "server weights"},
		{"Scaleway metadata", "backend a\n    server s [fd00:42::42]:80\n", 2, "a cloud metadata or control service"},
		{"short loopback", "backend a\n    server s 127.1:22\n", 2, "a loopback address"},
		{"decimal loopback", "backend a\n    server s 2130706433:22\n", 2, "a loopback address"},
		{"hex loopback", "backend a\n    server s 0x7f.1:22\n", 2, "a loopback address"},
		{"octal loopback", "backend a\n    server s 0177.0.0.1:22\n", 2, "a loopback address"},
		{"metadata service", "backend a\n    server s 169.254.169.254:80\n", 2, "link-local"},
		{"link-local IPv6", "backend a\n    server s [fe80::1%eth0]:80\n", 2, "link-local"},
		{"unspecified", "backend a\n    server s 0.0.0.0:8404\n", 2, "unspecified address"},
		{"zero", "backend a\n    server s 0:80\n", 2, "unspecified address"},
		{"any", "backend a\n    server s *:8404\n", 2, "unspecified address"},
		{"empty host", "backend a\n    server s :8404\n", 2, "unspecified address"},
		{"own public address", "backend a\n    server s 203.0.113.7:22\n", 2, "an address of this balancer"},
		{"own listener", "backend a\n    server s 203.0.113.7:443\n", 2, "the balancer listens there itself (*:443)"},
		{"loopback listener", "backend a\n    server s 127.0.0.9:80\n", 2, "the balancer listens there itself (*:80)"},
		{"listener at the client's port", "backend a\n    server s 127.0.0.1\n", 2, "the balancer listens there itself"},
		{"localhost", "backend a\n    server s localhost:22\n", 2, "a name of this machine"},
		{"localhost in capitals", "backend a\n    server s LocalHost:22\n", 2, "a name of this machine"},
		{"not a host name", "backend a\n    server s exa$mple.com:80\n", 2, "not an IP address or a host name"},
		{"check address", "backend a\n    server s 10.0.0.1:80 check addr 127.0.0.1 port 8404\n", 2, `check address "127.0.0.1"`},
		{"agent address", "backend a\n    server s 10.0.0.1:80 agent-check agent-addr 127.0.0.1 agent-port 22\n", 2, `agent address "127.0.0.1"`},
		{"socks4", "backend a\n    server s 10.0.0.1:80 socks4 127.0.0.1:1080\n", 2, `socks4 proxy "127.0.0.1:1080"`},
		{"init-addr", "backend a\n    server s web.example.com:80 init-addr last,127.0.0.1\n", 2, `init-addr address "127.0.0.1"`},
		{"http-check connect", "backend a\n    option httpchk\n    http-check connect addr 127.0.0.1 port 8404\n", 3, `check address "127.0.0.1"`},
		{"tcp-check connect", "backend a\n    option tcp-check\n    tcp-check connect addr 169.254.169.254 port 80\n", 3, "link-local"},
		{"server-template", "backend a\n    server-template s 1-3 127.0.0.1:22\n", 2, "a loopback address"},
		// found by review: each accepted once
		{"check port expression", "backend a\n    option tcp-check\n    tcp-check connect port env(HAPROXY_MASTER_CLI),length\n", 3, `sample fetch "env"`},
		{"check port reading a file", "backend a\n    option httpchk\n    http-check connect port str(x),map(/etc/passwd,1)\n", 3, `converter "map"`},
		{"AWS IPv6 metadata", "backend a\n    server s [fd00:ec2::254]:80\n", 2, "a cloud metadata or control service"},
		{"Alibaba metadata", "backend a\n    server s 100.100.100.200:80\n", 2, "a cloud metadata or control service"},
		{"Azure wire server", "backend a\n    server s 168.63.129.16:80\n", 2, "a cloud metadata or control service"},
		{"named like a base frontend", "backend https\n", 1, `backend name "https" is the name of one of the base config's sections`},
		{"counter without its number", "backend a\n    http-request track-sc0 src\n    http-request sc-inc-gpc0\n", 3, "write sc-inc-gpc0(N)"},
		{"counter with junk", "backend a\n    http-request track-sc0 src\n    http-request sc-inc-gpc0(0)x\n", 3, "write sc-inc-gpc0(N)"},
		{"counter with a blank", "backend a\n    http-request track-sc0 src\n    http-request sc-set-gpt0(\\ 0) 5\n", 3, "write sc-set-gpt0(N)"},
		{"wrapped counter in a fetch", "backend a\n    http-request track-sc0 src\n    http-request set-header X %[sc_get_gpc0(-18446744073709551616)]\n", 3, `fetch "sc_get_gpc0": write its stick counter as 0, 1 or 2`},
		{"shared listener's connections", "backend a\n    http-request set-header X %[dst_conn]\n", 2, `sample fetch "dst_conn"`},
		{"machine's own name", "backend a\n    server s vm-7:22\n", 2, "the name of this machine"},
		{"systemd's gateway name", "backend a\n    server s _gateway:80\n", 2, "only this machine's name services resolve"},
		{"multicast DNS name", "backend a\n    server s printer.local:80\n", 2, "only this machine's name services resolve"},
		{"random draws that stall HAProxy", "backend a\n    balance random(2000000000)\n", 2, "the number of draws must be 1 to 10"},
		{"server template too large", "backend a\n    server-template s 1-100000 192.0.2.10:80\n", 2, "at most 1000 servers per line"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pol := Policy{Balancer: testBalancer}
			// sections the operator may allow are allowed where the
			// case is about what is inside them
			if strings.HasPrefix(tc.conf, "cache ") && tc.line > 1 || strings.HasPrefix(tc.conf, "userlist ") && tc.line > 1 {
				pol.AllowSections = []string{"cache", "userlist"}
			}
			ps, _ := checkOne(tc.conf, pol)
			if len(ps) == 0 {
				t.Fatalf("accepted:\n%s", tc.conf)
			}
			p := ps[0]
			if p.Line != tc.line || !strings.Contains(p.Msg, tc.msg) {
				t.Errorf("got %s:%d %q\nwant line %d with %q", p.File, p.Line, p.Msg, tc.line, tc.msg)
			}
		})
	}
}

// TestPolicyAccepts: what ordinary tenants write passes.
func TestPolicyAccepts(t *testing.T) {
	conf := `# the shop's backend
backend shop_web
    mode http
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    option forwardfor
    no option http-server-close
    default option http-keep-alive
    cookie SRV insert indirect nocache
    timeout server 30s
    timeout connect 5s
    retries 3
    retry-on conn-failure empty-response
    log global
    default-server inter 2s rise 2 fall 3
    server s1 10.0.0.11:8080 check cookie s1
    server s2 web.example.com:443 ssl verify required ca-file @system-ca sni req.hdr(host) check
    server-template app 1-5 10.0.1.1:80 check
    stick-table type ip size 100k expire 30m store http_req_rate(10s),gpc0
    http-request track-sc0 src
    http-request deny deny_status 429 if { sc_http_req_rate(0) gt 100 }
    http-request sc-inc-gpc0(0) if { path_beg /login }
    acl is_api path_beg -i /api
    acl is_app path_reg ^/app(/.*)?$
    http-request replace-path ^/app(/.*)?$ \1 if is_app
    acl is_json req.hdr(content-type),lower -m sub json
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Request-Start "t=%[date(0,us)]"
    http-request set-var(txn.host) req.hdr(host),lower if is_api
    http-request set-var(txn.path) path, lower
    http-request add-header X-Via "%%[not an expression]"
    http-request redirect scheme https code 301 if !{ ssl_fc }
    http-request return status 200 content-type text/plain lf-string "host=%[var(txn.host)]" if { path /ping }
    http-request deny if { req.hdr_cnt(host) gt 1 } || !is_json
    http-response set-header Strict-Transport-Security "max-age=31536000"
    http-response del-header Server
    http-after-response set-header X-Served-By shop
    compression algo gzip
    compression type text/html text/plain
    filter compression
    use-server s1 if { req.cook(SRV) s1 }
    stick on src
backend shop_hash
    balance hash req.hdr(host),lower
    server s1 192.0.2.10:80
`
	ps, hosts := checkOne(conf, Policy{Balancer: testBalancer})
	if len(ps) > 0 {
		t.Fatalf("refused:\n%v", ps)
	}
	if len(hosts) != 1 || hosts[0].Name != "web.example.com" || hosts[0].Port != "443" || hosts[0].Line != 18 {
		t.Errorf("host names to resolve: %+v, want web.example.com:443 at line 18", hosts)
	}
}

// TestPolicyOperatorWidens: what each setting lets through, and only that.
func TestPolicyOperatorWidens(t *testing.T) {
	cases := []struct {
		name string
		conf string
		pol  Policy
	}{
		{"loopback servers", "backend a\n    server s 127.0.0.1:9000\n", Policy{AllowNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}},
		{"own address", "backend a\n    server s 203.0.113.7:8080\n", Policy{AllowNetworks: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}}},
		{"userlist", "userlist admins\n    user bob password $5$x$y\n    user eve insecure-password s3cret groups ops\nbackend a\n    http-request auth if !{ http_auth(admins) }\n", Policy{AllowSections: []string{"userlist"}}},
		{"cache", "cache c\n    total-max-size 4\nbackend a\n    http-request cache-use c\n    http-response cache-store c\n    filter cache c\n", Policy{AllowSections: []string{"cache"}}},
		{"exported base objects", "backend a\n    server s web.example.com:80 resolvers dns\n    http-request deny if !{ nbsrv(shared) gt 0 }\n", Policy{Balancer: Balancer{Exports: map[string]bool{"dns": true, "shared": true}}}},
		{"lua", "backend a\n    http-request lua.hook\n    http-request set-var(txn.x) src,lua.conv\n    http-request set-header X %[lua.fetch]\n", Policy{Extensions: []string{extLua}}},
		{"external check", "backend a\n    option external-check\n    external-check command /usr/local/bin/check\n", Policy{Extensions: []string{extExternalCheck}}},
		{"cross references", "backend a\n    server s 10.0.0.1:80 track other/s1\n    http-request deny if { nbsrv(other) lt 1 }\n", Policy{CrossRefs: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.pol.Balancer.Listeners, tc.pol.Balancer.LocalAddrs = testBalancer.Listeners, testBalancer.LocalAddrs
			if ps, _ := checkOne(tc.conf, tc.pol); len(ps) > 0 {
				t.Errorf("refused with the setting:\n%v", ps)
			}
			if ps, _ := checkOne(tc.conf, Policy{Balancer: testBalancer}); len(ps) == 0 {
				t.Errorf("accepted without the setting: it proves nothing")
			}
		})
	}
	// a listener stays refused whatever networks are allowed, and so does
	// the unspecified address
	wide := Policy{AllowNetworks: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, Balancer: testBalancer}
	for _, addr := range []string{"127.0.0.1:8404", "127.0.0.1:8402", "127.0.0.2:80", "203.0.113.7:443", "127.0.0.1:+8404", "0.0.0.0:9000"} {
		if ps, _ := checkOne("backend a\n    server s "+addr+"\n", wide); len(ps) == 0 {
			t.Errorf("server %s accepted with every network allowed", addr)
		}
	}
	// the cross-reference setting does not open the base's backends, nor
	// writing into another's table
	for _, conf := range []string{
		"backend a\n    http-request deny if { nbsrv(haproxy_config_acme) lt 1 }\n",
		"backend a\n    http-request track-sc0 src table other\n",
	} {
		if ps, _ := checkOne(conf, Policy{CrossRefs: true, Balancer: Balancer{BaseNames: map[string]bool{"https": true}}}); len(ps) == 0 {
			t.Errorf("accepted with cross references:\n%s", conf)
		}
	}
	// with a server on the balancer's own addresses, no other port of the
	// backend may be one the balancer listens on; written as HAProxy reads
	// it or not
	lo := Policy{AllowNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, Balancer: testBalancer}
	for _, conf := range []string{
		"backend a\n    server s 127.0.0.1:8404x\n",
		"backend a\n    server s 127.0.0.1:9000 check port 8404\n",
		"backend a\n    server s 127.0.0.1:9000 agent-check agent-port 8402\n",
		"backend a\n    option tcp-check\n    tcp-check connect port 443\n    server s 127.0.0.1:9000 check\n",
	} {
		if ps, _ := checkOne(conf, lo); len(ps) == 0 {
			t.Errorf("accepted with loopback allowed:\n%s", conf)
		}
	}
	if ps, _ := checkOne("backend a\n    server s 10.0.0.1:9000 check port 443\n", lo); len(ps) > 0 {
		t.Errorf("a remote server's check port refused: %v", ps)
	}
	// a counter the base tracks stays refused even when tracked here
	counted := Policy{Balancer: Balancer{Counters: [3]bool{true}}}
	if ps, _ := checkOne("backend a\n    stick-table type ip size 1k\n    http-request track-sc0 src\n", counted); len(ps) == 0 {
		t.Error("track-sc0 accepted while the base tracks stick counter 0")
	}
	if ps, _ := checkOne("backend a\n    stick-table type ip size 1k\n    http-request track-sc1 src\n    http-request deny if { sc1_conn_rate gt 5 }\n", counted); len(ps) > 0 {
		t.Errorf("a counter of its own refused: %v", ps)
	}
}

func TestInetAton(t *testing.T) {
	for in, want := range map[string]string{
		"127.1": "127.0.0.1", "2130706433": "127.0.0.1", "0x7f.1": "127.0.0.1", "0177.0.0.1": "127.0.0.1",
		"0": "0.0.0.0", "10.1.65535": "10.1.255.255", "0xA9.0xFE.0xA9.0xFE": "169.254.169.254",
	} {
		ip, ok := inetAton(in)
		if !ok || ip.String() != want {
			t.Errorf("inetAton(%q) = %v %v, want %s", in, ip, ok, want)
		}
	}
	for _, in := range []string{"", "1.2.3.4.5", "256.1.1.1", "1.2.3.256", "0x", "09", "a.b.c.d", "1..2", "4294967296"} {
		if ip, ok := inetAton(in); ok {
			t.Errorf("inetAton(%q) = %v, want no address", in, ip)
		}
	}
}

func TestParseListener(t *testing.T) {
	for in, want := range map[string]Listener{
		"127.0.0.1:8404":  {Addr: netip.MustParseAddr("127.0.0.1"), Port: 8404},
		":80":             {Port: 80},
		"*:443":           {Port: 443},
		"[::]:443":        {Addr: netip.IPv6Unspecified(), Port: 443},
		"ipv4@0.0.0.0:81": {Addr: netip.IPv4Unspecified(), Port: 81},
		"10.0.0.1:81-89":  {Addr: netip.MustParseAddr("10.0.0.1")},
	} {
		got, ok := ParseListener(in)
		if !ok || got != want {
			t.Errorf("ParseListener(%q) = %+v %v, want %+v", in, got, ok, want)
		}
	}
	for _, in := range []string{"unix@/run/x.sock", "/run/x.sock", "fd@3", "abns@x"} {
		if l, ok := ParseListener(in); ok {
			t.Errorf("ParseListener(%q) = %+v, want none", in, l)
		}
	}
}

func TestBaseFacts(t *testing.T) {
	text := []byte("global\n    stats socket ipv4@127.0.0.1:9999 level admin\n    stats socket /run/x.sock\n" +
		"frontend f\n    bind :80,:8080\n    bind 127.0.0.1:8443 ssl crt /x.pem\n" +
		"    http-request track-sc1 src table t\n    http-request set-var(txn.route) str(a)\n    use_backend %[var(txn.route)]\n" +
		"    http-request set-header X %[src,add(txn.weight),concat(,sess.tag,)]\n")
	listeners, counters, vars := BaseFacts(&assemble.Base{Text: text})
	want := []Listener{{Addr: netip.MustParseAddr("127.0.0.1"), Port: 9999}, {Port: 80}, {Port: 8080}, {Addr: netip.MustParseAddr("127.0.0.1"), Port: 8443}}
	if !slices.Equal(listeners, want) {
		t.Errorf("listeners %+v, want %+v", listeners, want)
	}
	if counters != [3]bool{false, true, false} {
		t.Errorf("counters %v, want only 1", counters)
	}
	if !vars["txn.route"] || !vars["txn.weight"] || !vars["sess.tag"] || len(vars) != 3 {
		t.Errorf("variables %v, want txn.route, txn.weight and sess.tag", vars)
	}
}

func TestDomainOwners(t *testing.T) {
	owners, err := ParseDomainOwners("# tenants\nshop=shop.example.com,Shop.Example.NET\nacme-*=acme.test ; acme-api=api.acme.test\n")
	if err != nil {
		t.Fatal(err)
	}
	loc := assemble.Location{Fragment: "x", File: "x.map"}
	cases := []struct {
		name, domain string
		ok           bool
	}{
		{"shop", "shop.example.com", true},
		{"shop", "www.shop.example.com", true},
		{"shop", "*.shop.example.net", true},
		{"shop", "example.com", false},
		{"shop", "evilshop.example.com", false},
		{"acme-blog", "blog.acme.test", true},
		{"acme-api", "api.acme.test", true},
		{"acme-api", "blog.acme.test", false}, // the exact entry wins over the prefix
		{"other", "shop.example.com", false},  // a name no entry binds maps nothing
	}
	for _, tc := range cases {
		ps := owners.check(tc.name, loc, []assemble.MapEntry{{Domain: tc.domain, Backend: "b", Line: 3}})
		if (len(ps) == 0) != tc.ok {
			t.Errorf("%s maps %s: problems %v, want allowed=%v", tc.name, tc.domain, ps, tc.ok)
		}
		if len(ps) > 0 && (ps[0].Line != 3 || !strings.Contains(ps[0].Msg, tc.domain)) {
			t.Errorf("problem %v, want line 3 naming %s", ps[0], tc.domain)
		}
	}
	var none DomainOwners
	if ps := none.check("any", loc, []assemble.MapEntry{{Domain: "a.example", Backend: "b", Line: 1}}); len(ps) > 0 {
		t.Errorf("without owners: %v", ps)
	}
	for _, bad := range []string{"shop", "shop=", "=a.example", "shop=*.example.com", "shop=x", "Shop=a.example"} {
		if _, err := ParseDomainOwners(bad); err == nil {
			t.Errorf("ParseDomainOwners(%q) accepted", bad)
		}
	}
	if o, err := ParseDomainOwners(" # nothing\n"); err != nil || o != nil {
		t.Errorf("empty owners = %v, %v; want nil", o, err)
	}
}

func TestCheckHosts(t *testing.T) {
	pol := Policy{Balancer: testBalancer}
	resolve := func(_ context.Context, host string) ([]netip.Addr, error) {
		switch host {
		case "app.example.com":
			return []netip.Addr{netip.MustParseAddr("192.0.2.10")}, nil
		case "sneaky.example.com":
			return []netip.Addr{netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("127.0.0.1")}, nil
		case "meta.example.com":
			return []netip.Addr{netip.MustParseAddr("169.254.169.254")}, nil
		}
		return nil, errors.New("no such host")
	}
	f, ps := Parse("t", "t.cfg", []byte("backend a\n    server s1 app.example.com:80\n    server s2 sneaky.example.com:80\n    server s3 gone.example.com:80\n    server s4 10.0.0.1:80 check addr meta.example.com\n"), "t.map", nil, pol)
	if len(ps) > 0 {
		t.Fatal(ps)
	}
	ps = CheckHosts(context.Background(), f, pol, resolve)
	if len(ps) != 2 || ps[0].Line != 3 || !strings.Contains(ps[0].Msg, "resolves to 127.0.0.1") || ps[1].Line != 5 || !strings.Contains(ps[1].Msg, "link-local") {
		t.Errorf("problems %v, want lines 3 (loopback) and 5 (link-local)", ps)
	}
}

// haproxyKeywords returns what "haproxy -dK" lists in the given class.
func haproxyKeywords(t *testing.T, class string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs haproxy")
	}
	bin := testkit.RequireHaproxy(t)
	// it lists the keywords, then fails to find a configuration: the exit
	// status says nothing
	out, _ := exec.Command(bin, "-dK"+class, "-q", "-c", "-f", "/dev/null").CombinedOutput()
	if !strings.Contains(string(out), "# List of registered") {
		t.Fatalf("haproxy -dK%s listed nothing:\n%s", class, out)
	}
	return string(out)
}

// TestAllowlistNamesAreHAProxys: every fetch, converter and action the
// allowlist names exists in this HAProxy, and the converter list the
// expression reader stops at is exactly HAProxy's.
func TestAllowlistNamesAreHAProxys(t *testing.T) {
	names := func(out, section string) map[string]bool {
		set := map[string]bool{}
		re := regexp.MustCompile(`(?m)^(?:\[[^\]]*\] )?([a-z0-9_.+-]+)[(:]`)
		for _, m := range re.FindAllStringSubmatch(out, -1) {
			set[m[1]] = true
		}
		return set
	}
	fetchNames := names(haproxyKeywords(t, "smp"), "")
	for name := range fetches {
		if !fetchNames[name] {
			t.Errorf("allowed fetch %q is not one of haproxy's", name)
		}
	}
	convNames := names(haproxyKeywords(t, "cnv"), "")
	for name := range converterList {
		if !convNames[name] {
			t.Errorf("allowed converter %q is not one of haproxy's", name)
		}
	}
	for name := range convNames {
		if !haproxyConverters[name] {
			t.Errorf("haproxy converter %q is missing from haproxyConverters: an expression would end before it", name)
		}
	}
	for name := range haproxyConverters {
		if !convNames[name] {
			t.Errorf("haproxyConverters lists %q, which haproxy does not know", name)
		}
	}
	acl := haproxyKeywords(t, "acl")
	for kw, fetch := range aclKeywords {
		if !strings.Contains(acl, "\n"+kw+" = "+fetch+" ") {
			t.Errorf("ACL keyword %s = %s is not haproxy's", kw, fetch)
		}
	}
	cfg := haproxyKeywords(t, "cfg")
	// HAProxy parses these actions itself, outside its keyword lists
	builtin := map[string]bool{"accept": true, "reject": true, "close": true, "track-sc0": true, "track-sc1": true, "track-sc2": true}
	listed := func(keyword, name string) bool {
		for _, kw := range []string{name, name + "*", strings.TrimRight(name, "012") + "*"} {
			if strings.Contains(cfg, "\t"+keyword+" "+kw+"\n") {
				return true
			}
		}
		return false
	}
	for keyword, actions := range map[string]map[string]action{
		"http-request": httpRequestActions, "http-response": httpResponseActions, "http-after-response": httpAfterResponseActions,
		"tcp-request content": tcpRequestActions, "tcp-response content": tcpResponseActions,
	} {
		for name := range actions {
			if !listed(keyword, name) && !(builtin[name] && strings.HasPrefix(keyword, "tcp-")) {
				t.Errorf("%s action %q is not haproxy's", keyword, name)
			}
		}
	}
	for name := range serverKeywords {
		if !strings.Contains(cfg, "\tserver <name> <addr> "+name+"\n") && !strings.Contains(cfg, "\tserver <name> <addr> "+name+" +") {
			t.Errorf("server keyword %q is not haproxy's", name)
		}
	}
}

// TestCheckHostsLocalNames: a name that resolves to this balancer's own
// address (allowed by ALLOW_NETWORKS) is checked like the literal: its
// section's check ports may not be the balancer's listeners; and an IPv4
// answer in IPv6 form counts as the IPv4 address.
func TestCheckHostsLocalNames(t *testing.T) {
	pol := Policy{AllowNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}, Balancer: testBalancer}
	resolve := func(_ context.Context, host string) ([]netip.Addr, error) {
		switch host {
		case "self6.example.com":
			return []netip.Addr{netip.MustParseAddr("::1")}, nil
		case "self4.example.com":
			return []netip.Addr{netip.MustParseAddr("::ffff:127.0.0.1")}, nil
		}
		return nil, errors.New("no such host")
	}
	cases := []struct {
		conf string
		ok   bool
	}{
		{"backend a\n    server s self6.example.com:9000 check port 443\n", false},
		{"backend a\n    server s self6.example.com:9000 check\n", true},
		{"backend a\n    server s self4.example.com:9000 check\n", true},
		{"backend a\n    server s self4.example.com:8402\n", false},
	}
	for _, tc := range cases {
		f, ps := Parse("t", "t.cfg", []byte(tc.conf), "t.map", nil, pol)
		if len(ps) > 0 {
			t.Fatalf("%s: %v", tc.conf, ps)
		}
		if ps := CheckHosts(context.Background(), f, pol, resolve); (len(ps) == 0) != tc.ok {
			t.Errorf("%s: problems %v, want accepted=%v", tc.conf, ps, tc.ok)
		}
	}
}
