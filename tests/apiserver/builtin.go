// Built-in kinds served next to the CRDs, so the operator's children (Deployment, Service, RBAC,
// Lease, Events, ...) go through a real server-side apply path in the tests.
//
// Each kind is stored in the same etcd through k8s.io/apiserver's generic registry, with the
// k8s.io/api types. There is no internal version and no conversion: each Go type is registered
// both as its served version and as the group's internal version, so the scheme hands it through
// unchanged. The strategies do what the generic layer cannot infer from a type: clear and keep
// status across the main and status endpoints, count metadata.generation on spec changes, and
// check the name rule of each kind; Secrets get their stringData merged and type defaulted, and a
// Namespace is Active. There is no other defaulting and no spec validation (those live in
// k8s.io/kubernetes, which Debian does not package), no RBAC enforcement and no garbage
// collection. Server-side apply uses the OpenAPI models generated from k8s.io/api at build time
// (see apiserver.sh), as kube-apiserver does.
package main

import (
	"context"
	"fmt"
	"reflect"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/api/validation/path"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/registry/generic"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	genericapiserver "k8s.io/apiserver/pkg/server"
	genericoptions "k8s.io/apiserver/pkg/server/options"
	"k8s.io/apiserver/pkg/storage/names"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"
)

// builtinKind is one built-in kind and how its REST storage behaves.
type builtinKind struct {
	groupVersion schema.GroupVersion
	kind         string
	resource     string
	singular     string
	shortNames   []string
	namespaced   bool
	// hasStatus: the kind has a status subresource; the main endpoint ignores status and the
	// status endpoint ignores spec, as in kube-apiserver.
	hasStatus bool
	// allowCreateOnUpdate: a PUT to a missing object creates it (kube-apiserver's choice per kind).
	allowCreateOnUpdate bool
	nameRule            apivalidation.ValidateNameFunc
	// prepare, if set, normalizes an object on every write through the main endpoint (after
	// status is cleared or kept).
	prepare   func(runtime.Object)
	newObject func() runtime.Object
	newList   func() runtime.Object
}

var builtinKinds = []builtinKind{
	{groupVersion: corev1.SchemeGroupVersion, kind: "Namespace", resource: "namespaces", singular: "namespace",
		shortNames: []string{"ns"}, hasStatus: true, nameRule: apivalidation.NameIsDNSLabel,
		prepare:   prepareNamespace,
		newObject: func() runtime.Object { return &corev1.Namespace{} },
		newList:   func() runtime.Object { return &corev1.NamespaceList{} }},
	{groupVersion: corev1.SchemeGroupVersion, kind: "ServiceAccount", resource: "serviceaccounts",
		singular: "serviceaccount", shortNames: []string{"sa"}, namespaced: true, allowCreateOnUpdate: true,
		nameRule:  apivalidation.NameIsDNSSubdomain,
		newObject: func() runtime.Object { return &corev1.ServiceAccount{} },
		newList:   func() runtime.Object { return &corev1.ServiceAccountList{} }},
	{groupVersion: corev1.SchemeGroupVersion, kind: "ConfigMap", resource: "configmaps", singular: "configmap",
		shortNames: []string{"cm"}, namespaced: true, nameRule: apivalidation.NameIsDNSSubdomain,
		newObject: func() runtime.Object { return &corev1.ConfigMap{} },
		newList:   func() runtime.Object { return &corev1.ConfigMapList{} }},
	{groupVersion: corev1.SchemeGroupVersion, kind: "Secret", resource: "secrets", singular: "secret",
		namespaced: true, nameRule: apivalidation.NameIsDNSSubdomain, prepare: prepareSecret,
		newObject: func() runtime.Object { return &corev1.Secret{} },
		newList:   func() runtime.Object { return &corev1.SecretList{} }},
	{groupVersion: corev1.SchemeGroupVersion, kind: "Service", resource: "services", singular: "service",
		shortNames: []string{"svc"}, namespaced: true, hasStatus: true, allowCreateOnUpdate: true,
		nameRule:  apivalidation.NameIsDNS1035Label,
		newObject: func() runtime.Object { return &corev1.Service{} },
		newList:   func() runtime.Object { return &corev1.ServiceList{} }},
	{groupVersion: corev1.SchemeGroupVersion, kind: "Event", resource: "events", singular: "event",
		shortNames: []string{"ev"}, namespaced: true, allowCreateOnUpdate: true,
		nameRule:  apivalidation.NameIsDNSSubdomain,
		newObject: func() runtime.Object { return &corev1.Event{} },
		newList:   func() runtime.Object { return &corev1.EventList{} }},
	{groupVersion: appsv1.SchemeGroupVersion, kind: "Deployment", resource: "deployments", singular: "deployment",
		shortNames: []string{"deploy"}, namespaced: true, hasStatus: true,
		nameRule:  apivalidation.NameIsDNSSubdomain,
		newObject: func() runtime.Object { return &appsv1.Deployment{} },
		newList:   func() runtime.Object { return &appsv1.DeploymentList{} }},
	{groupVersion: policyv1.SchemeGroupVersion, kind: "PodDisruptionBudget", resource: "poddisruptionbudgets",
		singular: "poddisruptionbudget", shortNames: []string{"pdb"}, namespaced: true, hasStatus: true,
		allowCreateOnUpdate: true, nameRule: apivalidation.NameIsDNSSubdomain,
		newObject: func() runtime.Object { return &policyv1.PodDisruptionBudget{} },
		newList:   func() runtime.Object { return &policyv1.PodDisruptionBudgetList{} }},
	{groupVersion: autoscalingv2.SchemeGroupVersion, kind: "HorizontalPodAutoscaler",
		resource: "horizontalpodautoscalers", singular: "horizontalpodautoscaler", shortNames: []string{"hpa"},
		namespaced: true, hasStatus: true, nameRule: apivalidation.NameIsDNSSubdomain,
		newObject: func() runtime.Object { return &autoscalingv2.HorizontalPodAutoscaler{} },
		newList:   func() runtime.Object { return &autoscalingv2.HorizontalPodAutoscalerList{} }},
	{groupVersion: networkingv1.SchemeGroupVersion, kind: "Ingress", resource: "ingresses", singular: "ingress",
		shortNames: []string{"ing"}, namespaced: true, hasStatus: true, allowCreateOnUpdate: true,
		nameRule:  apivalidation.NameIsDNSSubdomain,
		newObject: func() runtime.Object { return &networkingv1.Ingress{} },
		newList:   func() runtime.Object { return &networkingv1.IngressList{} }},
	{groupVersion: rbacv1.SchemeGroupVersion, kind: "Role", resource: "roles", singular: "role",
		namespaced: true, allowCreateOnUpdate: true, nameRule: path.ValidatePathSegmentName,
		newObject: func() runtime.Object { return &rbacv1.Role{} },
		newList:   func() runtime.Object { return &rbacv1.RoleList{} }},
	{groupVersion: rbacv1.SchemeGroupVersion, kind: "RoleBinding", resource: "rolebindings", singular: "rolebinding",
		namespaced: true, allowCreateOnUpdate: true, nameRule: path.ValidatePathSegmentName,
		newObject: func() runtime.Object { return &rbacv1.RoleBinding{} },
		newList:   func() runtime.Object { return &rbacv1.RoleBindingList{} }},
	{groupVersion: coordinationv1.SchemeGroupVersion, kind: "Lease", resource: "leases", singular: "lease",
		namespaced: true, allowCreateOnUpdate: true, nameRule: apivalidation.NameIsDNSSubdomain,
		newObject: func() runtime.Object { return &coordinationv1.Lease{} },
		newList:   func() runtime.Object { return &coordinationv1.LeaseList{} }},
	// Upstream, events.k8s.io/v1 Events and core/v1 Events are one resource converted between the
	// two versions; that conversion lives in k8s.io/kubernetes, so here they are stored apart.
	{groupVersion: eventsv1.SchemeGroupVersion, kind: "Event", resource: "events", singular: "event",
		shortNames: []string{"ev"}, namespaced: true, allowCreateOnUpdate: true,
		nameRule:  apivalidation.NameIsDNSSubdomain,
		newObject: func() runtime.Object { return &eventsv1.Event{} },
		newList:   func() runtime.Object { return &eventsv1.EventList{} }},
}

// prepareSecret does what kube-apiserver does to every Secret written: stringData is write-only,
// merged into data (its keys win), and the type defaults to Opaque.
func prepareSecret(obj runtime.Object) {
	secret, ok := obj.(*corev1.Secret)
	if !ok {
		return
	}
	if secret.Type == "" {
		secret.Type = corev1.SecretTypeOpaque
	}
	if len(secret.StringData) > 0 && secret.Data == nil {
		secret.Data = map[string][]byte{}
	}
	for key, value := range secret.StringData {
		secret.Data[key] = []byte(value)
	}
	secret.StringData = nil
}

// prepareNamespace: a Namespace is Active from its creation. There is no namespace controller, so
// no "kubernetes" finalizer: deleting a Namespace removes it at once, and not its objects.
func prepareNamespace(obj runtime.Object) {
	if namespace, ok := obj.(*corev1.Namespace); ok && namespace.Status.Phase == "" {
		namespace.Status.Phase = corev1.NamespaceActive
	}
}

// newBuiltinScheme registers the served versions and, for each served kind, the same Go type as
// the group's internal version (no conversion needed between the two).
func newBuiltinScheme() (*runtime.Scheme, error) {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme, autoscalingv2.AddToScheme,
		networkingv1.AddToScheme, rbacv1.AddToScheme, coordinationv1.AddToScheme, eventsv1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			return nil, err
		}
	}
	for _, k := range builtinKinds {
		internal := schema.GroupVersion{Group: k.groupVersion.Group, Version: runtime.APIVersionInternal}
		scheme.AddKnownTypeWithName(internal.WithKind(k.kind), k.newObject())
		scheme.AddKnownTypeWithName(internal.WithKind(k.kind+"List"), k.newList())
	}
	return scheme, nil
}

// structField returns the exported field `name` of a pointer to a struct, if it has one.
func structField(obj runtime.Object, name string) (reflect.Value, bool) {
	value := reflect.ValueOf(obj)
	if value.Kind() != reflect.Pointer || value.IsNil() || value.Elem().Kind() != reflect.Struct {
		return reflect.Value{}, false
	}
	f := value.Elem().FieldByName(name)
	return f, f.IsValid() && f.CanSet()
}

// copyField sets obj's field `name` to old's (used to keep status or spec across an update).
func copyField(obj, old runtime.Object, name string) {
	to, ok := structField(obj, name)
	from, okOld := structField(old, name)
	if ok && okOld {
		to.Set(from)
	}
}

// builtinStrategy is the create/update/delete strategy of a kind's main endpoint.
type builtinStrategy struct {
	runtime.ObjectTyper
	names.NameGenerator
	kind *builtinKind
}

func (s builtinStrategy) NamespaceScoped() bool { return s.kind.namespaced }

func (s builtinStrategy) PrepareForCreate(_ context.Context, obj runtime.Object) {
	if s.kind.hasStatus {
		if status, ok := structField(obj, "Status"); ok {
			status.Set(reflect.Zero(status.Type()))
		}
	}
	if s.kind.prepare != nil {
		s.kind.prepare(obj)
	}
	if _, hasSpec := structField(obj, "Spec"); hasSpec {
		if accessor, err := meta.Accessor(obj); err == nil {
			accessor.SetGeneration(1)
		}
	}
}

func (s builtinStrategy) PrepareForUpdate(_ context.Context, obj, old runtime.Object) {
	if s.kind.hasStatus {
		copyField(obj, old, "Status")
	}
	if s.kind.prepare != nil {
		s.kind.prepare(obj)
	}
	spec, hasSpec := structField(obj, "Spec")
	oldSpec, _ := structField(old, "Spec")
	if hasSpec && !equality.Semantic.DeepEqual(spec.Interface(), oldSpec.Interface()) {
		if accessor, err := meta.Accessor(obj); err == nil {
			accessor.SetGeneration(accessor.GetGeneration() + 1)
		}
	}
}

// Validate checks the kind's own name rule; the generic layer validates the rest of metadata.
func (s builtinStrategy) Validate(_ context.Context, obj runtime.Object) field.ErrorList {
	accessor, err := meta.Accessor(obj)
	if err != nil {
		return field.ErrorList{field.InternalError(field.NewPath("metadata"), err)}
	}
	var errs field.ErrorList
	for _, msg := range s.kind.nameRule(accessor.GetName(), false) {
		errs = append(errs, field.Invalid(field.NewPath("metadata", "name"), accessor.GetName(), msg))
	}
	return errs
}

func (s builtinStrategy) WarningsOnCreate(context.Context, runtime.Object) []string { return nil }
func (s builtinStrategy) Canonicalize(runtime.Object)                               {}
func (s builtinStrategy) AllowCreateOnUpdate() bool                                 { return s.kind.allowCreateOnUpdate }
func (s builtinStrategy) AllowUnconditionalUpdate() bool                            { return true }

// ValidateUpdate: a name cannot change, and the generic layer checks metadata updates.
func (s builtinStrategy) ValidateUpdate(context.Context, runtime.Object, runtime.Object) field.ErrorList {
	return nil
}

func (s builtinStrategy) WarningsOnUpdate(context.Context, runtime.Object, runtime.Object) []string {
	return nil
}

// GetResetFields: writes to the main endpoint do not own status.
func (s builtinStrategy) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	if !s.kind.hasStatus {
		return nil
	}
	return map[fieldpath.APIVersion]*fieldpath.Set{
		fieldpath.APIVersion(s.kind.groupVersion.String()): fieldpath.NewSet(fieldpath.MakePathOrDie("status")),
	}
}

// builtinStatusStrategy is the update strategy of the status subresource: only status changes.
type builtinStatusStrategy struct{ builtinStrategy }

func (s builtinStatusStrategy) PrepareForUpdate(_ context.Context, obj, old runtime.Object) {
	copyField(obj, old, "Spec")
}

func (s builtinStatusStrategy) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	return map[fieldpath.APIVersion]*fieldpath.Set{
		fieldpath.APIVersion(s.kind.groupVersion.String()): fieldpath.NewSet(fieldpath.MakePathOrDie("spec")),
	}
}

// builtinREST is a kind's main endpoint: the generic store plus its short names.
type builtinREST struct {
	*genericregistry.Store
	shortNames []string
}

func (r *builtinREST) ShortNames() []string { return r.shortNames }

// statusREST is a kind's status subresource. It never creates: a status write needs the object.
type statusREST struct{ store *genericregistry.Store }

func (r *statusREST) New() runtime.Object { return r.store.New() }
func (r *statusREST) Destroy()            {}

func (r *statusREST) Get(ctx context.Context, name string, options *metav1.GetOptions) (runtime.Object, error) {
	return r.store.Get(ctx, name, options)
}

func (r *statusREST) Update(ctx context.Context, name string, objInfo rest.UpdatedObjectInfo,
	createValidation rest.ValidateObjectFunc, updateValidation rest.ValidateObjectUpdateFunc,
	_ bool, options *metav1.UpdateOptions) (runtime.Object, bool, error) {
	return r.store.Update(ctx, name, objInfo, createValidation, updateValidation, false, options)
}

func (r *statusREST) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	return r.store.GetResetFields()
}

func (r *statusREST) ConvertToTable(ctx context.Context, object runtime.Object, tableOptions runtime.Object) (*metav1.Table, error) {
	return r.store.ConvertToTable(ctx, object, tableOptions)
}

// Compile-time checks that the REST types implement what the installer looks for.
var (
	_ rest.ShortNamesProvider  = &builtinREST{}
	_ rest.Patcher             = &statusREST{}
	_ rest.ResetFieldsStrategy = &statusREST{}
	_ rest.TableConvertor      = &statusREST{}
	_ rest.Lister              = &builtinREST{}
)

// installBuiltinKinds adds REST storage for every built-in kind to the server, stored through
// etcdOptions (the server's own etcd, under its path prefix).
func installBuiltinKinds(server *genericapiserver.GenericAPIServer, etcdOptions genericoptions.EtcdOptions,
	config *genericapiserver.RecommendedConfig) error {
	scheme, err := newBuiltinScheme()
	if err != nil {
		return fmt.Errorf("registering the built-in kinds: %w", err)
	}
	codecs := serializer.NewCodecFactory(scheme)
	var groupVersions []schema.GroupVersion
	seen := map[schema.GroupVersion]bool{}
	for _, k := range builtinKinds {
		if !seen[k.groupVersion] {
			seen[k.groupVersion] = true
			groupVersions = append(groupVersions, k.groupVersion)
		}
	}
	storageOptions := etcdOptions
	storageOptions.StorageConfig.Codec = codecs.LegacyCodec(groupVersions...)
	storageOptions.StorageConfig.StorageObjectCountTracker = config.StorageObjectCountTracker
	storageOptions.WatchCacheSizes = nil
	// No garbage collector runs here: without this, a delete asking for foreground or orphan
	// propagation would wait forever on a finalizer nobody removes (as kube-apiserver run with
	// --enable-garbage-collector=false does).
	storageOptions.EnableGarbageCollection = false
	optionsGetter := storageOptions.CreateRESTOptionsGetter(
		&genericoptions.SimpleStorageFactory{StorageConfig: storageOptions.StorageConfig}, config.ResourceTransformers)

	groups := map[string]*genericapiserver.APIGroupInfo{}
	var groupOrder []string
	for i := range builtinKinds {
		k := &builtinKinds[i]
		group := k.groupVersion.Group
		info, ok := groups[group]
		if !ok {
			created := genericapiserver.NewDefaultAPIGroupInfo(group, scheme, runtime.NewParameterCodec(scheme), codecs)
			info = &created
			groups[group] = info
			groupOrder = append(groupOrder, group)
		}
		strategy := builtinStrategy{ObjectTyper: scheme, NameGenerator: names.SimpleNameGenerator, kind: k}
		store := &genericregistry.Store{
			NewFunc:                   k.newObject,
			NewListFunc:               k.newList,
			DefaultQualifiedResource:  k.groupVersion.WithResource(k.resource).GroupResource(),
			SingularQualifiedResource: k.groupVersion.WithResource(k.singular).GroupResource(),
			CreateStrategy:            strategy,
			UpdateStrategy:            strategy,
			DeleteStrategy:            strategy,
			ResetFieldsStrategy:       strategy,
			TableConvertor:            rest.NewDefaultTableConvertor(k.groupVersion.WithResource(k.resource).GroupResource()),
		}
		if err := store.CompleteWithOptions(&generic.StoreOptions{RESTOptions: optionsGetter}); err != nil {
			return fmt.Errorf("storage for %s: %w", k.resource, err)
		}
		resources := info.VersionedResourcesStorageMap[k.groupVersion.Version]
		if resources == nil {
			resources = map[string]rest.Storage{}
			info.VersionedResourcesStorageMap[k.groupVersion.Version] = resources
		}
		resources[k.resource] = &builtinREST{Store: store, shortNames: k.shortNames}
		if k.hasStatus {
			statusStore := *store
			statusStrategy := builtinStatusStrategy{strategy}
			statusStore.UpdateStrategy = statusStrategy
			statusStore.ResetFieldsStrategy = statusStrategy
			resources[k.resource+"/status"] = &statusREST{store: &statusStore}
		}
	}

	var named []*genericapiserver.APIGroupInfo
	for _, group := range groupOrder {
		if group == "" {
			if err := server.InstallLegacyAPIGroup(genericapiserver.DefaultLegacyAPIPrefix, groups[group]); err != nil {
				return fmt.Errorf("installing the core group: %w", err)
			}
			continue
		}
		named = append(named, groups[group])
	}
	if err := server.InstallAPIGroups(named...); err != nil {
		return fmt.Errorf("installing the built-in groups: %w", err)
	}
	return nil
}
