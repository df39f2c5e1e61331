# The proxies the proxy benchmarks put in front of one backend, configured the same way wherever
# they are measured (bench/run-proxy.sh, bench/floor/run.sh). Sourced; uses $OUT for logs.

# wait_ws PORT [PATH]: ready when an upgrade through PORT to PATH (/ws/echo) answers 101.
wait_ws() {
  local path="${2:-/ws/echo}"
  for _ in $(seq 200); do
    # curl waits on the open tunnel until -m, so only the status it printed counts.
    local code
    code="$(curl -s -o /dev/null -m 0.5 -w '%{http_code}' --http1.1 \
      -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
      -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' "http://127.0.0.1:$1$path" 2>/dev/null || true)"
    [ "$code" = 101 ] && return 0
    sleep 0.05
  done
  echo "nothing answers 101 on port $1$path; see $OUT/*.log" >&2
  exit 1
}

# wsgate_proxy_conf DIR PORT BACK: a wsgate in proxy mode with one worker, the story's config.
wsgate_proxy_conf() {
  cat >"$1/wsgate.toml" <<EOF
[server]
listen = "127.0.0.1:$2"
workers = 1
max_connections = 19000

[websocket]
# The built-in echo route yields to proxy prefixes; turned off anyway so that no path of the
# measured proxy can be answered by its own hub (the first proxy run measured exactly that).
echo_path = ""

[[upstream]]
name = "websocket"
servers = ["127.0.0.1:$3"]

[[route]]
path_prefix = "/"
proxy_pass = "websocket"
EOF
}

# start_nginx DIR PORT BACK: nginx with the story's config plus the map block, defaults otherwise
# (proxy_read_timeout 60 s), except room for the idle figure (worker_connections, nofile) and no
# access log. Sets NGINX_MASTER and NGINX_WORKER (the process doing the proxying).
start_nginx() {
  local dir="$1"
  cat >"$dir/nginx.conf" <<EOF
daemon off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 19000; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    map \$http_upgrade \$connection_upgrade {
        default upgrade;
        ''      close;
    }
    upstream websocket {
        server 127.0.0.1:$3;
    }
    server {
        listen 127.0.0.1:$2;
        location / {
            proxy_pass http://websocket;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
        }
    }
}
EOF
  nginx -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" 2>>"$OUT/nginx.log" &
  NGINX_MASTER=$!
  NGINX_WORKER=""
  for _ in $(seq 100); do
    NGINX_WORKER="$(pgrep -P "$NGINX_MASTER" | head -1 || true)"
    [ -n "$NGINX_WORKER" ] && break
    sleep 0.05
  done
}
