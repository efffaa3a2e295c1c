// chart-render renders a Helm chart offline, like `helm template`, for CI machines that have
// no helm binary. It implements the helm-compatible subset the tidegate chart uses: Go
// text/template with the Sprig functions plus helm's own (include, tpl, required, fail,
// toYaml, fromYaml, toJson, fromJson, lookup returning an empty map), the .Values / .Release /
// .Chart / .Capabilities / .Template / .Subcharts objects, values coalescing with chart defaults
// (a null removes a default), and unpacked subcharts under charts/.
//
// It renders in helm's strict-lint mode (missingkey=error), so a template that reads a value
// that does not exist fails here, as it does under `helm lint --strict`.
//
// Build (Debian's packaged sources, no module proxy needed):
//
//	apt-get install golang-go golang-github-masterminds-sprig-dev
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o chart-render ./scripts/chart-render
//
// Usage:
//
//	chart-render [--release NAME] [--namespace NS] [--kube-version v1.31.0]
//	             [-f values.yaml]... [--values-out FILE] [--notes-out FILE] CHART_DIR
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/ioutil"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	yaml "gopkg.in/yaml.v2"
)

// ChartMeta mirrors the fields of helm's chart.Metadata that templates read as .Chart.X.
type ChartMeta struct {
	APIVersion   string            `yaml:"apiVersion"`
	Name         string            `yaml:"name"`
	Version      string            `yaml:"version"`
	AppVersion   string            `yaml:"appVersion"`
	Description  string            `yaml:"description"`
	Type         string            `yaml:"type"`
	KubeVersion  string            `yaml:"kubeVersion"`
	Home         string            `yaml:"home"`
	Icon         string            `yaml:"icon"`
	Keywords     []string          `yaml:"keywords"`
	Sources      []string          `yaml:"sources"`
	Annotations  map[string]string `yaml:"annotations"`
	Deprecated   bool              `yaml:"deprecated"`
	Maintainers  []interface{}     `yaml:"maintainers"`
	Dependencies []interface{}     `yaml:"dependencies"`
}

type chart struct {
	dir       string
	path      string // template path prefix, e.g. "app/charts/tidegate"
	meta      ChartMeta
	defaults  map[string]interface{}
	templates map[string]string // full template name -> text
	subcharts []*chart
}

// KubeVersion and Capabilities mirror helm's chartutil types.
type KubeVersion struct {
	Version, Major, Minor string
}

func (k KubeVersion) String() string     { return k.Version }
func (k KubeVersion) GitVersion() string { return k.Version }

type APIVersions []string

// Has reports whether an apiVersion (group/version) or apiVersion/Kind is available.
func (a APIVersions) Has(v string) bool {
	for _, x := range a {
		if x == v {
			return true
		}
	}
	return false
}

type Capabilities struct {
	KubeVersion KubeVersion
	APIVersions APIVersions
	HelmVersion map[string]string
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func main() {
	var valueFiles stringList
	release := flag.String("release", "release", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	kubeVersion := flag.String("kube-version", "v1.31.0", "Kubernetes version for .Capabilities")
	valuesOut := flag.String("values-out", "", "write the coalesced values (JSON) to this file")
	notesOut := flag.String("notes-out", "", "write the rendered NOTES.txt to this file")
	flag.Var(&valueFiles, "f", "values file (repeatable; later files win)")
	flag.Var(&valueFiles, "values", "values file (repeatable; later files win)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: chart-render [flags] CHART_DIR")
		os.Exit(2)
	}
	if err := run(flag.Arg(0), *release, *namespace, *kubeVersion, valueFiles, *valuesOut, *notesOut); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

func run(dir, release, namespace, kubeVersion string, valueFiles []string, valuesOut, notesOut string) error {
	c, err := loadChart(dir, "")
	if err != nil {
		return err
	}
	user := map[string]interface{}{}
	for _, f := range valueFiles {
		v, err := readValuesFile(f)
		if err != nil {
			return err
		}
		user = mergeMaps(user, v)
	}
	vals := coalesceChart(c, user)
	if valuesOut != "" {
		b, err := json.MarshalIndent(vals, "", "  ")
		if err != nil {
			return err
		}
		if err := ioutil.WriteFile(valuesOut, b, 0o644); err != nil {
			return err
		}
	}

	kv := strings.Split(strings.TrimPrefix(kubeVersion, "v"), ".")
	if len(kv) != 3 {
		return fmt.Errorf("--kube-version %q: expected vMAJOR.MINOR.PATCH", kubeVersion)
	}
	caps := &Capabilities{
		KubeVersion: KubeVersion{Version: "v" + strings.Join(kv, "."), Major: kv[0], Minor: kv[1]},
		APIVersions: APIVersions{"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1",
			"rbac.authorization.k8s.io/v1"},
		HelmVersion: map[string]string{"Version": "v3.99.0-chart-render"},
	}
	rel := map[string]interface{}{
		"Name": release, "Namespace": namespace, "Service": "Helm",
		"IsInstall": true, "IsUpgrade": false, "Revision": 1,
	}

	r := newRenderer()
	if err := r.parse(c); err != nil {
		return err
	}
	ctxs := map[string]map[string]interface{}{}
	buildContexts(c, vals, rel, caps, ctxs)

	names := make([]string, 0, len(ctxs))
	for n := range ctxs {
		names = append(names, n)
	}
	sort.Strings(names)
	var out bytes.Buffer
	var notes string
	for _, name := range names {
		base := filepath.Base(name)
		if strings.HasPrefix(base, "_") {
			continue
		}
		isNotes := base == "NOTES.txt"
		// Only the top chart's NOTES.txt is rendered, as helm does.
		if isNotes && name != c.path+"/templates/NOTES.txt" {
			continue
		}
		s, err := r.execute(name, ctxs[name])
		if err != nil {
			return err
		}
		if isNotes {
			notes = s
			continue
		}
		for _, doc := range splitDocs(s) {
			fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", name, doc)
		}
	}
	if notesOut != "" {
		if err := ioutil.WriteFile(notesOut, []byte(notes), 0o644); err != nil {
			return err
		}
	}
	_, err = os.Stdout.Write(out.Bytes())
	return err
}

// splitDocs splits a rendered file into its YAML documents at "---" lines, dropping empty ones.
func splitDocs(s string) []string {
	var docs []string
	var cur []string
	flush := func() {
		d := strings.TrimRight(strings.Join(cur, "\n"), " \n\t")
		if t := strings.TrimSpace(d); t != "" && !onlyComments(t) {
			docs = append(docs, strings.TrimLeft(d, "\n"))
		}
		cur = nil
	}
	for _, l := range strings.Split(s, "\n") {
		if l == "---" || strings.HasPrefix(l, "--- ") {
			flush()
			continue
		}
		cur = append(cur, l)
	}
	flush()
	return docs
}

func onlyComments(s string) bool {
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") {
			return false
		}
	}
	return true
}

func loadChart(dir, parentPath string) (*chart, error) {
	b, err := ioutil.ReadFile(filepath.Join(dir, "Chart.yaml"))
	if err != nil {
		return nil, err
	}
	c := &chart{dir: dir, templates: map[string]string{}}
	if err := yaml.UnmarshalStrict(b, &c.meta); err != nil {
		return nil, fmt.Errorf("%s/Chart.yaml: %v", dir, err)
	}
	if c.meta.Name == "" {
		return nil, fmt.Errorf("%s/Chart.yaml: name is required", dir)
	}
	if parentPath == "" {
		c.path = c.meta.Name
	} else {
		c.path = parentPath + "/charts/" + c.meta.Name
	}
	c.defaults = map[string]interface{}{}
	if _, err := os.Stat(filepath.Join(dir, "values.yaml")); err == nil {
		if c.defaults, err = readValuesFile(filepath.Join(dir, "values.yaml")); err != nil {
			return nil, err
		}
	}
	tdir := filepath.Join(dir, "templates")
	err = filepath.Walk(tdir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		text, err := ioutil.ReadFile(p)
		if err != nil {
			return err
		}
		c.templates[c.path+"/"+filepath.ToSlash(rel)] = string(text)
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	entries, err := ioutil.ReadDir(filepath.Join(dir, "charts"))
	if err == nil {
		for _, e := range entries {
			if !e.IsDir() {
				if strings.HasSuffix(e.Name(), ".tgz") {
					return nil, fmt.Errorf("%s/charts/%s: packaged subcharts are not supported; unpack it", dir, e.Name())
				}
				continue
			}
			sc, err := loadChart(filepath.Join(dir, "charts", e.Name()), c.path)
			if err != nil {
				return nil, err
			}
			c.subcharts = append(c.subcharts, sc)
		}
	}
	return c, nil
}

// readValuesFile parses YAML the way helm does (sigs.k8s.io/yaml: YAML -> JSON -> Go), so
// numbers are float64 and map keys are strings.
func readValuesFile(path string) (map[string]interface{}, error) {
	b, err := ioutil.ReadFile(path)
	if err != nil {
		return nil, err
	}
	v, err := yamlToJSONValue(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	if v == nil {
		return map[string]interface{}{}, nil
	}
	m, ok := v.(map[string]interface{})
	if !ok {
		return nil, fmt.Errorf("%s: top level must be a map", path)
	}
	return m, nil
}

func yamlToJSONValue(b []byte) (interface{}, error) {
	var raw interface{}
	if err := yaml.Unmarshal(b, &raw); err != nil {
		return nil, err
	}
	conv, err := jsonable(raw)
	if err != nil {
		return nil, err
	}
	j, err := json.Marshal(conv)
	if err != nil {
		return nil, err
	}
	var out interface{}
	if err := json.Unmarshal(j, &out); err != nil {
		return nil, err
	}
	return out, nil
}

func jsonable(v interface{}) (interface{}, error) {
	switch t := v.(type) {
	case map[interface{}]interface{}:
		m := make(map[string]interface{}, len(t))
		for k, val := range t {
			cv, err := jsonable(val)
			if err != nil {
				return nil, err
			}
			m[fmt.Sprint(k)] = cv
		}
		return m, nil
	case []interface{}:
		l := make([]interface{}, len(t))
		for i, val := range t {
			cv, err := jsonable(val)
			if err != nil {
				return nil, err
			}
			l[i] = cv
		}
		return l, nil
	default:
		return v, nil
	}
}

// mergeMaps merges b into a (b wins; maps merge recursively), like helm's -f handling.
func mergeMaps(a, b map[string]interface{}) map[string]interface{} {
	out := make(map[string]interface{}, len(a))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		if bm, ok := v.(map[string]interface{}); ok {
			if am, ok := out[k].(map[string]interface{}); ok {
				out[k] = mergeMaps(am, bm)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// coalesce returns user values layered over defaults; a user null deletes the default key.
func coalesce(user, defaults map[string]interface{}) map[string]interface{} {
	out := map[string]interface{}{}
	for k, v := range defaults {
		out[k] = deepCopy(v)
	}
	for k, v := range user {
		if v == nil {
			delete(out, k)
			continue
		}
		um, uok := v.(map[string]interface{})
		dm, dok := out[k].(map[string]interface{})
		if uok && dok {
			out[k] = coalesce(um, dm)
		} else {
			out[k] = deepCopy(v)
		}
	}
	// Nulls left inside defaults are removed as well (helm drops them when coalescing).
	for k, v := range out {
		if v == nil {
			delete(out, k)
		}
	}
	return out
}

func coalesceChart(c *chart, user map[string]interface{}) map[string]interface{} {
	vals := coalesce(user, c.defaults)
	for _, sc := range c.subcharts {
		sub, _ := vals[sc.meta.Name].(map[string]interface{})
		if sub == nil {
			sub = map[string]interface{}{}
		}
		vals[sc.meta.Name] = coalesceChart(sc, sub)
	}
	return vals
}

func deepCopy(v interface{}) interface{} {
	switch t := v.(type) {
	case map[string]interface{}:
		m := make(map[string]interface{}, len(t))
		for k, val := range t {
			m[k] = deepCopy(val)
		}
		return m
	case []interface{}:
		l := make([]interface{}, len(t))
		for i, val := range t {
			l[i] = deepCopy(val)
		}
		return l
	default:
		return v
	}
}

// buildContexts makes the per-template top-level object for every template of c and its
// subcharts, and returns c's own context (used as .Subcharts.<name> by the parent).
func buildContexts(c *chart, vals map[string]interface{}, rel map[string]interface{}, caps *Capabilities,
	out map[string]map[string]interface{}) map[string]interface{} {
	subs := map[string]interface{}{}
	for _, sc := range c.subcharts {
		sv, _ := vals[sc.meta.Name].(map[string]interface{})
		subs[sc.meta.Name] = buildContexts(sc, sv, rel, caps, out)
	}
	meta := c.meta
	top := map[string]interface{}{
		"Values":       vals,
		"Release":      rel,
		"Chart":        &meta,
		"Capabilities": caps,
		"Files":        map[string]interface{}{},
		"Subcharts":    subs,
	}
	for name := range c.templates {
		ctx := make(map[string]interface{}, len(top)+1)
		for k, v := range top {
			ctx[k] = v
		}
		ctx["Template"] = map[string]interface{}{"Name": name, "BasePath": c.path + "/templates"}
		out[name] = ctx
	}
	return top
}

type renderer struct {
	root     *template.Template
	includes map[string]int
}

func newRenderer() *renderer {
	r := &renderer{includes: map[string]int{}}
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	extra := template.FuncMap{
		"include":       r.include,
		"tpl":           r.tpl,
		"required":      required,
		"fail":          func(msg string) (string, error) { return "", errors.New(msg) },
		"toYaml":        toYAML,
		"mustToYaml":    mustToYAML,
		"fromYaml":      fromYAML,
		"fromYamlArray": fromYAMLArray,
		"toJson":        toJSON,
		"mustToJson":    mustToJSON,
		"fromJson":      fromJSON,
		"fromJsonArray": fromJSONArray,
		"lookup": func(string, string, string, string) (map[string]interface{}, error) {
			return map[string]interface{}{}, nil
		},
	}
	for k, v := range extra {
		funcs[k] = v
	}
	r.root = template.New("chart-render").Funcs(funcs).Option("missingkey=error")
	return r
}

func (r *renderer) parse(c *chart) error {
	// Subcharts first, so a parent's define of the same name wins (as in helm).
	for _, sc := range c.subcharts {
		if err := r.parse(sc); err != nil {
			return err
		}
	}
	names := make([]string, 0, len(c.templates))
	for n := range c.templates {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if _, err := r.root.New(n).Parse(c.templates[n]); err != nil {
			return fmt.Errorf("parse error: %v", err)
		}
	}
	return nil
}

func (r *renderer) execute(name string, ctx interface{}) (string, error) {
	var buf bytes.Buffer
	if err := r.root.ExecuteTemplate(&buf, name, ctx); err != nil {
		return "", fmt.Errorf("render error in %s: %v", name, err)
	}
	return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
}

func (r *renderer) include(name string, data interface{}) (string, error) {
	if r.includes[name] > 1000 {
		return "", fmt.Errorf("rendering template has a nested reference name: %s", name)
	}
	r.includes[name]++
	defer func() { r.includes[name]-- }()
	var buf bytes.Buffer
	if err := r.root.ExecuteTemplate(&buf, name, data); err != nil {
		return "", err
	}
	return buf.String(), nil
}

func (r *renderer) tpl(text string, data interface{}) (string, error) {
	clone, err := r.root.Clone()
	if err != nil {
		return "", err
	}
	t, err := clone.New("tpl").Parse(text)
	if err != nil {
		return "", fmt.Errorf("cannot parse template %q: %v", text, err)
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, data); err != nil {
		return "", fmt.Errorf("error during tpl function execution for %q: %v", text, err)
	}
	return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
}

func required(msg string, val interface{}) (interface{}, error) {
	if val == nil {
		return val, errors.New(msg)
	}
	if s, ok := val.(string); ok && s == "" {
		return val, errors.New(msg)
	}
	return val, nil
}

// mustToYAML marshals like sigs.k8s.io/yaml (helm's toYaml): Go -> JSON -> YAML, keys sorted.
func mustToYAML(v interface{}) (string, error) {
	j, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	var obj interface{}
	if err := yaml.Unmarshal(j, &obj); err != nil {
		return "", err
	}
	b, err := yaml.Marshal(obj)
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(string(b), "\n"), nil
}

func toYAML(v interface{}) string {
	s, err := mustToYAML(v)
	if err != nil {
		return ""
	}
	return s
}

func fromYAML(s string) map[string]interface{} {
	v, err := yamlToJSONValue([]byte(s))
	if err != nil {
		return map[string]interface{}{"Error": err.Error()}
	}
	m, ok := v.(map[string]interface{})
	if !ok {
		if v == nil {
			return map[string]interface{}{}
		}
		return map[string]interface{}{"Error": "not a map"}
	}
	return m
}

func fromYAMLArray(s string) []interface{} {
	v, err := yamlToJSONValue([]byte(s))
	if err != nil {
		return []interface{}{err.Error()}
	}
	l, _ := v.([]interface{})
	return l
}

func mustToJSON(v interface{}) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

func toJSON(v interface{}) string {
	s, _ := mustToJSON(v)
	return s
}

func fromJSON(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func fromJSONArray(s string) []interface{} {
	var l []interface{}
	if err := json.Unmarshal([]byte(s), &l); err != nil {
		return []interface{}{err.Error()}
	}
	return l
}
