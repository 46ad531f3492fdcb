# One meshed workload: the app, weft-dp + Envoy as a sidecar (UID 5678), and an init container
# that installs the transparent-proxy rules. __NAME__, __SERVICE__, __PORT__, __IMAGE__, __ARGS__
# and __ENV__ are filled in by kind-e2e.sh.
apiVersion: apps/v1
kind: Deployment
metadata: { name: __NAME__, namespace: demo }
spec:
  replicas: 1
  selector: { matchLabels: { app: __NAME__ } }
  template:
    metadata: { labels: { app: __NAME__ } }
    spec:
      initContainers:
        - name: weft-init
          image: weft:dev
          imagePullPolicy: Never
          command: [weftctl, install, transparent-proxy, --dp-user, "5678", --redirect-dns]
          securityContext: { capabilities: { add: [NET_ADMIN, NET_RAW] }, runAsUser: 0 }
      containers:
        - name: app
          image: __IMAGE__
          args: __ARGS__
          env: __ENV__
        - name: weft-dp
          image: weft:dev
          imagePullPolicy: Never
          securityContext: { runAsUser: 5678 }
          env:
            - { name: POD_IP, valueFrom: { fieldRef: { fieldPath: status.podIP } } }
          command: [sh, -c]
          args:
            - |
              printf 'type: Dataplane\nmesh: default\nname: __NAME__\nnetworking:\n  address: %s\n  inbound:\n    - port: __PORT__\n      tags: {kuma.io/service: __SERVICE__}\n  transparentProxying: {}\n' "$POD_IP" > /tmp/dataplane.yaml
              exec weft-dp run --cp-address https://weft-cp.weft-system:5678 --ca-cert-file /token/ca.crt \
                --dataplane-token-file /token/token --dataplane-file /tmp/dataplane.yaml --dns-enabled --work-dir /tmp/weft-dp
          readinessProbe: { httpGet: { path: /ready, port: 9902 } }
          volumeMounts: [{ name: token, mountPath: /token }]
      volumes: [{ name: token, secret: { secretName: __NAME__-token } }]
