// Package kubernetes holds the Kubernetes manifests of deploy/kubernetes
// and, in this test, what keeps them honest: every document is decoded
// strictly into the Kubernetes API types (a misspelt field fails), the
// pods are checked for what the README promises (a native sidecar after
// the redirect init container, probes on the admin port the config
// uses, drop ALL), and the sidemesh config each pod mounts is loaded the
// way `sidemesh validate` loads it, from a copy of the pod's volume with
// certificates and keys made for the test.
package kubernetes

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/sidemesh/sidemesh/discovery/gossip"
	"github.com/sidemesh/sidemesh/policy/identity"
	"github.com/sidemesh/sidemesh/sidecar/config"
)

// kinds maps "apiVersion kind" to a new value of its API type. A kind not
// listed fails the test: add it here when a manifest needs it.
var kinds = map[string]func() any{
	"v1 ConfigMap":                       func() any { return new(corev1.ConfigMap) },
	"v1 Service":                         func() any { return new(corev1.Service) },
	"apps/v1 Deployment":                 func() any { return new(appsv1.Deployment) },
	"networking.k8s.io/v1 NetworkPolicy": func() any { return new(networkingv1.NetworkPolicy) },
}

// kustomizationFile is the one YAML file that is not a Kubernetes object.
const kustomizationFile = "kustomization.yaml"

// objects is every object of the manifests, by kind.
type objects struct {
	configMaps  map[string]*corev1.ConfigMap
	services    []*corev1.Service
	deployments []*appsv1.Deployment
	policies    []*networkingv1.NetworkPolicy
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decodeStrict decodes one YAML document into the API type its apiVersion
// and kind name, rejecting unknown and duplicate fields. It returns nil
// for a document that holds nothing but comments.
func decodeStrict(doc []byte) (any, error) {
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, err
	}
	if string(bytes.TrimSpace(j)) == "null" {
		return nil, nil
	}
	var tm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, err
	}
	newObj, ok := kinds[tm.APIVersion+" "+tm.Kind]
	if !ok {
		return nil, fmt.Errorf("apiVersion %q kind %q: not a kind this test knows", tm.APIVersion, tm.Kind)
	}
	obj := newObj()
	// As the API server decodes: field names matched case-sensitively
	// (encoding/json, behind yaml.UnmarshalStrict, would take targetport
	// for targetPort), unknown and duplicate fields refused.
	j, err = yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	strict, err := sigsjson.UnmarshalStrict(j, obj, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	if len(strict) > 0 {
		return nil, fmt.Errorf("%s: %w", tm.Kind, errors.Join(strict...))
	}
	return obj, nil
}

func manifestFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return slices.DeleteFunc(files, func(f string) bool { return f == kustomizationFile })
}

func loadObjects(t *testing.T) objects {
	t.Helper()
	o := objects{configMaps: map[string]*corev1.ConfigMap{}}
	files := manifestFiles(t)
	if len(files) == 0 {
		t.Fatal("no manifests in deploy/kubernetes")
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range docSeparator.Split(string(data), -1) {
			obj, err := decodeStrict([]byte(doc))
			if err != nil {
				t.Errorf("%s: document %d: %v", f, i+1, err)
				continue
			}
			switch obj := obj.(type) {
			case *corev1.ConfigMap:
				o.configMaps[obj.Name] = obj
			case *corev1.Service:
				o.services = append(o.services, obj)
			case *appsv1.Deployment:
				o.deployments = append(o.deployments, obj)
			case *networkingv1.NetworkPolicy:
				o.policies = append(o.policies, obj)
			}
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return o
}

// TestStrictDecodingCatchesTypos makes sure the strict decoding the other
// tests rely on does refuse what kubectl would refuse or silently drop.
func TestStrictDecodingCatchesTypos(t *testing.T) {
	for name, doc := range map[string]string{
		"misspelt field": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replica: 2}\n",
		"nested typo":    "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 80, tragetPort: 8080}]}\n",
		"wrong case":     "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 80, targetport: 8080}]}\n",
		"duplicate key":  "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\ndata: {c: d}\n",
		"wrong type":     "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: two}\n",
		"unknown kind":   "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n",
	} {
		if _, err := decodeStrict([]byte(doc)); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
	if _, err := decodeStrict([]byte("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 80}]}\n")); err != nil {
		t.Errorf("a good Service: %v", err)
	}
}

// TestKustomizationListsEveryManifest keeps kubectl apply -k in step with
// the files.
func TestKustomizationListsEveryManifest(t *testing.T) {
	data, err := os.ReadFile(kustomizationFile)
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
	}
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		t.Fatalf("%s: %v", kustomizationFile, err)
	}
	got := slices.Sorted(slices.Values(k.Resources))
	if want := manifestFiles(t); !slices.Equal(got, want) {
		t.Errorf("%s resources = %v, want every manifest: %v", kustomizationFile, got, want)
	}
}

// TestDeployments checks each pod against the sidemesh config it mounts.
func TestDeployments(t *testing.T) {
	o := loadObjects(t)
	if len(o.deployments) == 0 {
		t.Fatal("no Deployment")
	}
	for _, d := range o.deployments {
		t.Run(d.Name, func(t *testing.T) { checkPod(t, &d.Spec.Template.Spec, o.configMaps) })
	}
}

func checkPod(t *testing.T, pod *corev1.PodSpec, cms map[string]*corev1.ConfigMap) {
	if sc := pod.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Error("pod securityContext.runAsNonRoot is not true")
	}
	all := slices.Concat(pod.InitContainers, pod.Containers)
	for _, c := range all {
		checkContainer(t, &c)
	}

	sidecar, sidecarIdx, native := findContainer(pod, "run")
	if sidecar == nil {
		t.Fatal("no container runs `sidemesh run`")
	}
	others := slices.ContainsFunc(pod.Containers, func(c corev1.Container) bool { return c.Name != sidecar.Name })
	if others && !native {
		t.Errorf("%s runs beside an app but is not an init container", sidecar.Name)
	}
	if native && (sidecar.RestartPolicy == nil || *sidecar.RestartPolicy != corev1.ContainerRestartPolicyAlways) {
		t.Errorf("init container %s: restartPolicy is not Always: not a native sidecar", sidecar.Name)
	}

	cfg := loadConfig(t, pod, sidecar, cms)
	if cfg == nil {
		return
	}
	if cfg.Admin == nil {
		t.Fatal("the config has no admin section: nothing to probe")
	}
	adminPort := portOf(t, cfg.Admin.Listen)
	for probe, want := range map[string]struct {
		p    *corev1.Probe
		path string
	}{
		"liveness":  {sidecar.LivenessProbe, "/live"},
		"readiness": {sidecar.ReadinessProbe, "/ready"},
		"startup":   {sidecar.StartupProbe, "/ready"},
	} {
		if want.p == nil || want.p.HTTPGet == nil {
			t.Errorf("%s probe: missing or not httpGet", probe)
			continue
		}
		if got := want.p.HTTPGet.Path; got != want.path {
			t.Errorf("%s probe path = %s, want %s", probe, got, want.path)
		}
		if got := containerPort(t, sidecar, want.p.HTTPGet.Port); got != adminPort {
			t.Errorf("%s probe port = %d, want the admin port %d of %s", probe, got, adminPort, cfg.Admin.Listen)
		}
	}
	if cfg.Service != nil {
		if p := portOf(t, cfg.Inbound.Listen); !hasPort(sidecar, p) {
			t.Errorf("the inbound port %d is not among %s's ports", p, sidecar.Name)
		}
	}

	grace := int64(30)
	if pod.TerminationGracePeriodSeconds != nil {
		grace = *pod.TerminationGracePeriodSeconds
	}
	var sleeps time.Duration
	for _, c := range all {
		if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
			sleeps += time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
		}
	}
	if sleeps == 0 {
		t.Error("no container has a preStop sleep: the pod stops before its endpoints are removed")
	}
	if need := sleeps + cfg.DrainTimeout; time.Duration(grace)*time.Second <= need {
		t.Errorf("terminationGracePeriodSeconds = %d, want more than the preStop sleeps and drain_timeout, %s", grace, need)
	}

	redirect, redirectIdx, redirectInit := findContainer(pod, "redirect")
	if redirect == nil {
		if others {
			t.Error("an app pod without a `sidemesh redirect` init container")
		}
		return
	}
	if !redirectInit || redirect.RestartPolicy != nil {
		t.Errorf("%s: want a plain init container (no restartPolicy), run to completion before the sidecar", redirect.Name)
	}
	if redirectIdx > sidecarIdx {
		t.Errorf("%s runs after the sidecar %s", redirect.Name, sidecar.Name)
	}
	if redirect.SecurityContext == nil || redirect.SecurityContext.Capabilities == nil ||
		!slices.Contains(redirect.SecurityContext.Capabilities.Add, "NET_ADMIN") {
		t.Errorf("%s does not add NET_ADMIN", redirect.Name)
	}
	if !slices.Contains(listFlag(redirect.Args, "exclude-inbound-ports"), strconv.Itoa(adminPort)) {
		t.Errorf("%s does not exclude the admin port %d: the kubelet's probes would be redirected", redirect.Name, adminPort)
	}
	if g := cfg.Discovery.Gossip; g != nil {
		p := strconv.Itoa(portOf(t, g.Bind))
		for _, f := range []string{"exclude-inbound-ports", "exclude-outbound-ports"} {
			if !slices.Contains(listFlag(redirect.Args, f), p) {
				t.Errorf("%s: --%s does not hold the gossip port %s", redirect.Name, f, p)
			}
		}
	}
	uid := runAsUser(pod, sidecar)
	if got := flagValue(redirect.Args, "proxy-uid"); got != strconv.FormatInt(uid, 10) {
		t.Errorf("%s: --proxy-uid = %q, want the sidecar's UID %d", redirect.Name, got, uid)
	}
}

// checkContainer checks what every container must have: requests and
// a memory limit, a read-only root, no privilege escalation, every
// capability dropped (the redirect init container adds its own back).
func checkContainer(t *testing.T, c *corev1.Container) {
	t.Helper()
	r := c.Resources
	if r.Requests.Cpu().IsZero() || r.Requests.Memory().IsZero() || r.Limits.Memory().IsZero() {
		t.Errorf("container %s: want cpu and memory requests and a memory limit", c.Name)
	}
	sc := c.SecurityContext
	if sc == nil {
		t.Errorf("container %s: no securityContext", c.Name)
		return
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("container %s: readOnlyRootFilesystem is not true", c.Name)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("container %s: allowPrivilegeEscalation is not false", c.Name)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("container %s is privileged", c.Name)
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("container %s: capabilities do not drop ALL", c.Name)
	}
	if sc.Capabilities != nil && len(sc.Capabilities.Add) > 0 && (len(c.Args) == 0 || c.Args[0] != "redirect") {
		t.Errorf("container %s adds %v; only the redirect init container may", c.Name, sc.Capabilities.Add)
	}
}

// findContainer returns the container whose first argument is the sidemesh
// subcommand sub, its index in the pod's start order, and whether it is an
// init container.
func findContainer(pod *corev1.PodSpec, sub string) (*corev1.Container, int, bool) {
	for i := range pod.InitContainers {
		if c := &pod.InitContainers[i]; len(c.Args) > 0 && c.Args[0] == sub {
			return c, i, true
		}
	}
	for i := range pod.Containers {
		if c := &pod.Containers[i]; len(c.Args) > 0 && c.Args[0] == sub {
			return c, len(pod.InitContainers) + i, false
		}
	}
	return nil, -1, false
}

// loadConfig lays out the projected volume that holds the container's
// config in a temporary directory, as the kubelet would, with a CA, leaf
// certificates and keys made for the test in place of the Secrets, and
// loads the config as `sidemesh validate` does (config.Load: Parse, then
// the files it names). So a config path that no Secret item provides
// fails here.
func loadConfig(t *testing.T, pod *corev1.PodSpec, c *corev1.Container, cms map[string]*corev1.ConfigMap) *config.Config {
	t.Helper()
	cfgPath := flagValue(c.Args, "c")
	if cfgPath == "" {
		cfgPath = flagValue(c.Args, "config")
	}
	if cfgPath == "" {
		t.Fatalf("%s: no -c FILE in %v", c.Name, c.Args)
	}
	var mount *corev1.VolumeMount
	for i, m := range c.VolumeMounts {
		if strings.HasPrefix(cfgPath, strings.TrimSuffix(m.MountPath, "/")+"/") {
			mount = &c.VolumeMounts[i]
		}
	}
	if mount == nil {
		t.Fatalf("%s: no volume mounted where %s is", c.Name, cfgPath)
	}
	var vol *corev1.Volume
	for i := range pod.Volumes {
		if pod.Volumes[i].Name == mount.Name {
			vol = &pod.Volumes[i]
		}
	}
	if vol == nil || vol.Projected == nil {
		t.Fatalf("%s: volume %s is missing or not projected", c.Name, mount.Name)
	}
	if m := vol.Projected.DefaultMode; m == nil || *m&0o007 != 0 {
		t.Errorf("volume %s: defaultMode lets every user read the keys", vol.Name)
	}

	rel := strings.TrimPrefix(cfgPath, strings.TrimSuffix(mount.MountPath, "/")+"/")
	origin := "a Secret"
	root := t.TempDir()
	caDir := filepath.Join(t.TempDir(), "ca")
	if err := identity.InitCA(caDir, "mesh.test", 0); err != nil {
		t.Fatal(err)
	}
	write := func(p string, data []byte) {
		full := filepath.Join(root, filepath.FromSlash(path.Clean(p)))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, src := range vol.Projected.Sources {
		switch {
		case src.ConfigMap != nil:
			cm, ok := cms[src.ConfigMap.Name]
			if !ok {
				t.Fatalf("volume %s: no ConfigMap %s in the manifests", vol.Name, src.ConfigMap.Name)
			}
			for _, it := range src.ConfigMap.Items {
				data, ok := cm.Data[it.Key]
				if !ok {
					t.Fatalf("ConfigMap %s has no key %s", cm.Name, it.Key)
				}
				write(it.Path, []byte(data))
				if path.Clean(it.Path) == path.Clean(rel) {
					origin = fmt.Sprintf("ConfigMap %s, key %s", cm.Name, it.Key)
				}
			}
		case src.Secret != nil:
			if len(src.Secret.Items) == 0 {
				t.Fatalf("volume %s: secret %s without items: list the keys it must hold", vol.Name, src.Secret.Name)
			}
			for _, it := range src.Secret.Items {
				write(it.Path, fakeSecret(t, caDir, it.Key))
			}
		}
	}

	file := filepath.Join(root, filepath.FromSlash(rel))
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%s: the volume has no %s", c.Name, rel)
	}
	// Parse alone, under the path the pod uses: what a typo in a key or a
	// value would fail.
	if _, err := config.Parse(cfgPath, data); err != nil {
		t.Fatalf("%s (%s): config does not parse (lines count from the first line of the config):\n%v", cfgPath, origin, err)
	}
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatalf("%s (%s): sidemesh validate fails:\n%v", cfgPath, origin, err)
	}
	for _, w := range cfg.Warnings() {
		if !strings.Contains(w.Error(), "admin.listen") { // expected: probes need the pod's address
			t.Errorf("%s: unexpected warning: %v", cfgPath, w)
		}
	}
	return cfg
}

// fakeSecret makes the content of a Secret key by its name: a CA bundle,
// a leaf or its key as `sidemesh ca issue` writes them, a gossip or
// sticky key as `sidemesh keygen` prints it.
func fakeSecret(t *testing.T, caDir, key string) []byte {
	t.Helper()
	read := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	switch {
	case key == "ca.pem":
		return read(filepath.Join(caDir, "ca.pem"))
	case strings.HasSuffix(key, ".pem"):
		svc, isKey := strings.CutSuffix(strings.TrimSuffix(key, ".pem"), "-key")
		cert, k := filepath.Join(caDir, svc+".pem"), filepath.Join(caDir, svc+"-key.pem")
		if _, err := os.Stat(cert); err != nil {
			if cert, k, err = identity.IssueLeaf(caDir, svc, "default", 0); err != nil {
				t.Fatal(err)
			}
		}
		if isKey {
			return read(k)
		}
		return read(cert)
	case strings.HasSuffix(key, ".key"):
		k, err := gossip.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		return []byte(k + "\n")
	}
	t.Fatalf("secret key %s: the test does not know what it holds", key)
	return nil
}

// TestServices checks each Service selects a pod and names its ports.
func TestServices(t *testing.T) {
	o := loadObjects(t)
	for _, s := range o.services {
		var pods []*corev1.PodSpec
		for _, d := range o.deployments {
			if matches(s.Spec.Selector, d.Spec.Template.Labels) {
				pods = append(pods, &d.Spec.Template.Spec)
			}
		}
		if len(pods) == 0 {
			t.Errorf("Service %s selects no Deployment's pods", s.Name)
			continue
		}
		for _, p := range s.Spec.Ports {
			for _, pod := range pods {
				if p.TargetPort.Type == intstr.String && !podHasPort(pod, p.TargetPort.StrVal, p.Protocol) {
					t.Errorf("Service %s: a selected pod has no %s port %s", s.Name, p.Protocol, p.TargetPort.StrVal)
				}
			}
		}
		if s.Spec.ClusterIP == corev1.ClusterIPNone && !s.Spec.PublishNotReadyAddresses {
			t.Errorf("headless Service %s: gossip seeds must resolve before the pods are ready", s.Name)
		}
	}
}

// TestNetworkPoliciesKeepAdminClosed checks every pod is under a policy
// and none opens the admin port.
func TestNetworkPoliciesKeepAdminClosed(t *testing.T) {
	o := loadObjects(t)
	for _, d := range o.deployments {
		covered := false
		for _, p := range o.policies {
			if matches(p.Spec.PodSelector.MatchLabels, d.Spec.Template.Labels) {
				covered = true
				for _, rule := range p.Spec.Ingress {
					if len(rule.Ports) == 0 {
						t.Errorf("NetworkPolicy %s: an ingress rule without ports opens the admin port", p.Name)
					}
					for _, port := range rule.Ports {
						if port.Port != nil && port.Port.IntValue() == 19000 {
							t.Errorf("NetworkPolicy %s opens the admin port", p.Name)
						}
					}
				}
			}
		}
		if !covered {
			t.Errorf("Deployment %s: no NetworkPolicy selects its pods", d.Name)
		}
	}
}

func matches(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func podHasPort(pod *corev1.PodSpec, name string, proto corev1.Protocol) bool {
	if proto == "" {
		proto = corev1.ProtocolTCP
	}
	for _, c := range slices.Concat(pod.InitContainers, pod.Containers) {
		for _, p := range c.Ports {
			pp := p.Protocol
			if pp == "" {
				pp = corev1.ProtocolTCP
			}
			if p.Name == name && pp == proto {
				return true
			}
		}
	}
	return false
}

func portOf(t *testing.T, hostport string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatalf("%q: %v", hostport, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%q: %v", hostport, err)
	}
	return n
}

// containerPort resolves a probe's port, a number or a port name.
func containerPort(t *testing.T, c *corev1.Container, p intstr.IntOrString) int {
	t.Helper()
	if p.Type == intstr.Int {
		return p.IntValue()
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort)
		}
	}
	t.Errorf("container %s has no port named %s", c.Name, p.StrVal)
	return 0
}

func hasPort(c *corev1.Container, port int) bool {
	return slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return int(p.ContainerPort) == port })
}

func runAsUser(pod *corev1.PodSpec, c *corev1.Container) int64 {
	if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
		return *c.SecurityContext.RunAsUser
	}
	if pod.SecurityContext != nil && pod.SecurityContext.RunAsUser != nil {
		return *pod.SecurityContext.RunAsUser
	}
	return -1
}

// flagValue returns the value of -name or --name in args, written as
// --name=v or --name v.
func flagValue(args []string, name string) string {
	for i, a := range args {
		for _, prefix := range []string{"-" + name, "--" + name} {
			if v, ok := strings.CutPrefix(a, prefix+"="); ok {
				return v
			}
			if a == prefix && i+1 < len(args) {
				return args[i+1]
			}
		}
	}
	return ""
}

// listFlag returns a comma-separated flag's values.
func listFlag(args []string, name string) []string {
	v := flagValue(args, name)
	if v == "" {
		return nil
	}
	return strings.Split(v, ",")
}
