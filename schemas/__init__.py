"""Flotilla's API: every kind, the error Status, quantities, selectors, request bodies and subjects."""
from .allocation import IPAddress, IPAddressSpec, ParentReference, ServiceNodePort, ServiceNodePortSpec
from .base import (API_VERSIONS, Condition, LabelSelector, LabelSelectorRequirement, ListMeta, Model,
                   ObjectMeta, OwnerReference, TopObject, now_iso, now_micro, parse_time)
from .cluster import (EndpointAddress, EndpointPort, Endpoints, EndpointSubset, Event, EventSource,
                      Namespace, Node, NodeAddress, NodeSpec, NodeStatus, ObjectReference, Service,
                      ServicePort, ServiceSpec, Taint)
from .pod import (Container, ContainerPort, ContainerState, ContainerStateRunning, ContainerStateTerminated,
                  ContainerStateWaiting, ContainerStatus, EnvVar, Pod, PodSpec, PodStatus, PodTemplateSpec,
                  Probe, ResourceRequirements, Toleration, Volume)
from .requests import (BindRequest, DeleteRequest, GetRequest, ListRequest, ObjectList, PatchRequest,
                       ScaleRequest, WatchAck, WatchEvent, WatchRequest)
from .resources import (API_PREFIX, BY_KIND, DEFAULT_BUCKET, DEFAULT_NAMESPACES, NODE_LEASE_NAMESPACE,
                        RESOURCES, SYSTEM_NAMESPACE, Resource, decode_key, lookup)
from .status import ApiError, Status
from .workloads import (Deployment, DeploymentSpec, DeploymentStatus, Lease, LeaseSpec, ReplicaSet,
                        ReplicaSetSpec, ReplicaSetStatus)

__all__ = [n for n in dir() if not n.startswith("_")]
