package fragments

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// AllowlistMarkdown renders the allowlist for the README, from the lists
// themselves, so that the documentation cannot drift from what is checked.
func AllowlistMarkdown() string {
	var b strings.Builder
	list := func(title string, names []string) {
		slices.Sort(names)
		fmt.Fprintf(&b, "- **%s** (%d): %s\n", title, len(names), "`"+strings.Join(names, "`, `")+"`")
	}
	keys := func(m map[string]args) []string { return slices.Collect(maps.Keys(m)) }
	list("backend keywords", slices.DeleteFunc(keys(backendKeywords), func(k string) bool { return k == extExternalCheck }))
	var opts []string
	for k := range backendOptions {
		if k != "external-check" {
			opts = append(opts, k)
		}
	}
	list("`option` names (also after `no` and `default`)", opts)
	list("`server`, `default-server` and `server-template` settings", keys(serverKeywords))
	for _, rs := range []struct {
		name    string
		actions map[string]action
	}{
		{"`http-request` actions", httpRequestActions},
		{"`http-response` actions", httpResponseActions},
		{"`http-after-response` actions", httpAfterResponseActions},
		{"`tcp-request content` actions", tcpRequestActions},
		{"`tcp-response content` actions", tcpResponseActions},
	} {
		list(rs.name, slices.Collect(maps.Keys(rs.actions)))
	}
	list("`userlist` keywords (with ALLOW_SECTIONS=userlist)", keys(sectionKeywords["userlist"]))
	list("`cache` keywords (with ALLOW_SECTIONS=cache)", keys(sectionKeywords["cache"]))
	list("sample fetches", slices.Collect(maps.Keys(fetches)))
	list("ACL keywords", slices.Collect(maps.Keys(aclKeywords)))
	list("converters", slices.Collect(maps.Keys(converterList)))
	list("ACL flags", []string{"-i", "-n", "-m", "--"})
	return b.String()
}
