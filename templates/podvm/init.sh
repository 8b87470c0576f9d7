#!/bin/busybox sh
# Pacific Lab pod init: PID 1 of every pod VM (busybox ash).
#
# It loads the kernel modules listed in /lib/modules/load, finds its disks by
# serial (config, scratch, image0..imageN), unpacks the pod's configuration
# (a tar archive written by hypervisor/podvm/config.py), brings the network
# up, and runs the pod's containers, each in its own overlayfs root (lower:
# its image's erofs, upper: the scratch disk), restarting them per the pod's
# restartPolicy with CrashLoopBackOff delays. When no container runs and none
# will restart, it reports "done" and powers the VM off.
#
# Channels (record formats: hypervisor/podvm/channel.py):
#   ttyS0  console: this script's own log and the kernel's
#   ttyS1  events:  one line per record, "KIND TIME FIELD..."
#   ttyS2  output:  "out TIME CONTAINER RESTART STREAM BASE64", one write() per record
#                   (at most 24 KiB of data per record)
#   ttyS3  control: "TERM GRACE|- ID" or "KILL - ID" from the host, "ack ID" back
#
# Nothing secret is ever written to the console or the event channel.

/bin/busybox mkdir -p /proc /sys /dev /run /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid devtmpfs /dev
exec </dev/null >/dev/console 2>&1
umask 022
# The OOM killer spares the init and its helpers (supervisors, forwarders);
# each container is set back to 0 by LAUNCH.
echo -1000 >/proc/self/oom_score_adj

R=/run/pod            # everything of ours
CFG=$R/cfg            # the unpacked configuration (RAM only: it may hold secrets)
S=$R/scratch          # the scratch disk (ext4): upper layers and disk-backed emptyDirs
mkdir -p $CFG $S $R/image $R/vol $R/root $R/c

log() { read -r up _ </proc/uptime; echo "pod-init: [$up] $*"; }

# The host channels, opened once and inherited by every helper below (never
# by a container: see supervise). raw: no newline translation, no echo.
exec 3>/dev/ttyS1 4>/dev/ttyS2 5<>/dev/ttyS3
for t in ttyS1 ttyS2 ttyS3; do stty -F /dev/$t raw -echo -echoe -echok -echoctl -echoke || log "stty $t failed"; done

# ev KIND FIELD...: one event record (one write(): echo is a builtin that writes once).
ev() { k=$1; shift; echo "$k $EPOCHREALTIME${*:+ $*}" >&3; }

# Power off after the host has everything: drain the serial ports first
# (stty sets attributes with TCSADRAIN, which waits until the UART is empty).
finish() {
    stty -F /dev/ttyS2 raw -echo >/dev/null 2>&1
    stty -F /dev/ttyS1 raw -echo >/dev/null 2>&1
    log "powering off"
    poweroff -f
}

fatal() {
    log "FATAL: $*"
    ev error "$(echo "$*" | tr '\r\n' '  ')"
    finish
}

read -r up _ </proc/uptime
ev booted "$up"
log "booted"

# -- kernel modules ----------------------------------------------------
while read -r mod kind; do
    if ! insmod "/lib/modules/$mod.ko" 2>/dev/null && [ "$kind" != optional ]; then
        fatal "insmod $mod failed"
    fi
done </lib/modules/load

# -- disks, found by serial (/sys/block/vdX/serial), never by letter --------
disk() {
    for d in /sys/block/vd*; do
        [ -r "$d/serial" ] || continue
        s=; read -r s <"$d/serial"
        if [ "$s" = "$1" ]; then echo "/dev/${d##*/}"; return 0; fi
    done
    return 1
}
wait_disk() {
    n=0
    until disk "$1"; do
        n=$((n + 1)); [ $n -gt 100 ] && return 1
        sleep 0.05
    done
}

log "modules loaded"
dev=$(wait_disk config) || fatal "no disk with serial 'config'"
tar -x -f "$dev" -C $CFG || fatal "cannot unpack the configuration from $dev"
# pod.sh sets POD_* variables; its values were quoted by the host.
. $CFG/pod.sh || fatal "bad configuration"

dev=$(wait_disk scratch) || fatal "no disk with serial 'scratch'"
mount -t ext4 -o noatime,noinit_itable "$dev" $S || fatal "cannot mount the scratch disk $dev"
mkdir -p $S/c $S/vol

log "disks mounted"

# -- network -----------------------------------------------------------
hostname "$POD_HOSTNAME"
ip link set lo up
if [ -n "$POD_ADDRESS" ]; then
    n=0 ifc=
    while [ -z "$ifc" ]; do
        for d in /sys/class/net/*; do
            [ "${d##*/}" = lo ] || { ifc=${d##*/}; break; }
        done
        [ -n "$ifc" ] && break
        n=$((n + 1)); [ $n -gt 100 ] && fatal "no network interface"
        sleep 0.05
    done
    ip addr add "$POD_ADDRESS/$POD_PREFIX" dev "$ifc" || fatal "cannot set $POD_ADDRESS/$POD_PREFIX on $ifc"
    ip link set "$ifc" up || fatal "cannot bring $ifc up"
    if [ -n "$POD_GATEWAY" ]; then
        ip route add default via "$POD_GATEWAY" dev "$ifc" || fatal "cannot route via $POD_GATEWAY"
    fi
    ev network "$ifc" "$POD_ADDRESS/$POD_PREFIX" "${POD_GATEWAY:--}"
fi
mkdir -p /etc
for f in hosts resolv.conf hostname; do cp "$CFG/etc/$f" "/etc/$f"; done

log "network configured"

# -- the pod's /dev (shared by its containers, like the pod sandbox's) ---
D=$R/dev
mkdir -p $D
mount -t tmpfs -o nosuid,mode=0755,size=65536k tmpfs $D
mknod -m 0666 $D/null c 1 3
mknod -m 0666 $D/zero c 1 5
mknod -m 0666 $D/full c 1 7
mknod -m 0666 $D/random c 1 8
mknod -m 0666 $D/urandom c 1 9
mknod -m 0666 $D/tty c 5 0
ln -s /proc/self/fd $D/fd
ln -s /proc/self/fd/0 $D/stdin
ln -s /proc/self/fd/1 $D/stdout
ln -s /proc/self/fd/2 $D/stderr
mkdir -p $D/pts $D/shm $D/mqueue
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts $D/pts
ln -s pts/ptmx $D/ptmx
mount -t tmpfs -o nosuid,nodev,noexec,mode=1777,size=65536k shm $D/shm

# -- container images: every imageN disk, read-only erofs -----------------
for d in /sys/block/vd*; do
    s=; read -r s <"$d/serial"
    case $s in
        image[0-9]*)
            mkdir -p "$R/image/${s#image}"
            mount -t erofs -o ro "/dev/${d##*/}" "$R/image/${s#image}" || fatal "cannot mount $s (erofs)"
            : >"$R/image/${s#image}.mounted" ;;
    esac
done

# -- volumes -----------------------------------------------------------
# volumes.sh calls "volume INDEX KIND MEDIUM SIZE" once per pod volume.
volume() {
    v=$R/vol/$1
    case $2 in
        emptyDir)
            mkdir -p "$v"
            if [ "$3" = Memory ]; then
                mount -t tmpfs -o "nosuid,nodev,mode=0777${4:+,size=$4}" tmpfs "$v" || return 1
            else
                mkdir -p "$S/vol/$1" && chmod 0777 "$S/vol/$1" && mount -o bind "$S/vol/$1" "$v" || return 1
            fi ;;
        files)
            # configMap/secret data: already in RAM (unpacked from the config disk).
            mkdir -p "$CFG/v/$1" "$v" && mount -o bind "$CFG/v/$1" "$v" && mount -o remount,bind,ro "$v" ;;
        *) return 1 ;;
    esac
}
. $CFG/volumes.sh || fatal "cannot set up the pod's volumes"

# -- containers --------------------------------------------------------

# Runs inside a container root as "/.pod/busybox sh -c PREP": reads pairs of
# lines (dir|file, absolute path) on stdin, makes each path inside the root
# (so that the image's symlinks resolve inside the root, never in ours; the
# target of a dangling one is made, as runc does) and prints where it really is.
PREP='
mk() {
    mkdir -p "$1" 2>&- && return 0
    local p= c t rest=$1
    n=$((n + 1)); [ $n -lt 40 ] || return 1
    while [ -n "$rest" ]; do
        c=${rest%%/*}
        case $rest in */*) rest=${rest#*/} ;; *) rest= ;; esac
        [ -n "$c" ] || continue
        p=$p/$c
        if [ -L "$p" ] && [ ! -e "$p" ]; then
            t=$(readlink "$p") || return 1
            case $t in /*) ;; *) t=${p%/*}/$t ;; esac
            mk "$t" || return 1
        elif [ ! -e "$p" ]; then
            mkdir "$p" || return 1
        fi
    done
}
while IFS= read -r kind && IFS= read -r path; do
    n=0
    if [ "$kind" = file ]; then
        mk "$(dirname "$path")" && { [ -e "$path" ] || : >"$path"; } || exit 1
    else
        mk "$path" || exit 1
    fi
    realpath "$path" || exit 1
done'

# Runs inside a container root as "/.pod/busybox sh -c LOOKUP WORKDIR PATH ARGV0":
# resolves ARGV0 like runc (Go exec.LookPath, with the container's PATH) and
# prints the path, or a Kubernetes-style message and exits 1.
LOOKUP='
cd -- "$0" 2>/dev/null || { echo "chdir to cwd (\"$0\") set in config.json failed: no such file or directory"; exit 1; }
case $2 in
    */*)
        [ -e "$2" ] || { echo "exec: \"$2\": stat $2: no such file or directory"; exit 1; }
        [ -f "$2" ] && [ -x "$2" ] || { echo "exec: \"$2\": permission denied"; exit 1; }
        echo "$2"; exit 0 ;;
esac
set -f; IFS=:
for d in $1; do
    [ -n "$d" ] || d=.
    if [ -f "$d/$2" ] && [ -x "$d/$2" ]; then echo "$d/$2"; exit 0; fi
done
echo "exec: \"$2\": executable file not found in \$PATH"
exit 1'

# Runs inside a container root as
#   "/.pod/busybox sh -c LAUNCH WORKDIR EXE NAME=VALUE... -- ARGV..."
# with an empty environment: changes to WORKDIR, sets the container
# environment and execs EXE with ARGV (argv[0] kept, like runc). Variable
# names a shell cannot hold (a.b, x-y) take the path through busybox "env"
# (argv[0] is then EXE). The script's own variables are __pod_* and never
# exported.
LAUNCH='
echo 0 >/proc/self/oom_score_adj
cd -- "$0" || exit 128
__pod_exe=$1; shift
__pod_plain=1
for __pod_kv; do
    [ "$__pod_kv" = -- ] && break
    case ${__pod_kv%%=*} in ""|[0-9]*|*[!A-Za-z0-9_]*) __pod_plain= ;; esac
done
unset PWD OLDPWD SHLVL PATH
if [ -n "$__pod_plain" ]; then
    while [ "$1" != -- ]; do export "$1" || exit 128; shift; done
    shift
    __pod_a0=$1; shift
    exec -a "$__pod_a0" "$__pod_exe" "$@"
fi
__pod_n=$#; __pod_i=0; __pod_state=env
while [ $__pod_i -lt $__pod_n ]; do
    __pod_a=$1; shift; __pod_i=$((__pod_i + 1))
    case $__pod_state in
        env)
            if [ "$__pod_a" = -- ]; then __pod_state=argv0; set -- "$@" "$__pod_exe"
            else set -- "$@" "$__pod_a"; fi ;;
        argv0) __pod_state=args ;;
        *) set -- "$@" "$__pod_a" ;;
    esac
done
exec /.pod/busybox env -i -- "$@"'

# forward NAME RESTART STREAM <fifo: frame a container stream as output records.
# Each dd reads whatever the pipe holds (up to 24 KiB: a quiet container's
# line goes out at once, a chatty one's in big records, as the processes
# spawned per record cost more than the bytes) and each record is one echo,
# so one write(): records of two containers never interleave.
forward() {
    while :; do
        b=$(dd bs=24576 count=1 2>/dev/null | base64 -w 0)
        [ -n "$b" ] || break
        echo "out $EPOCHREALTIME $1 $2 $3 $b" >&4
    done
}

terminating() { [ -e $R/terminating ]; }

# in_root ARG...: run busybox inside the current container root.
in_root() { chroot "$root" /.pod/busybox "$@"; }

# prepare_root: mount the container's root for this run and everything in it.
prepare_root() {
    run=$S/c/$i/$restarts
    root=$R/root/$i
    mkdir -p "$run/upper" "$run/work" "$root" || return 1
    img=$R/image/$c_image
    [ -e "$img.mounted" ] || { msg="no image disk image$c_image"; return 1; }
    mount -t overlay overlay -o "lowerdir=$img,upperdir=$run/upper,workdir=$run/work" "$root" ||
        { msg="cannot mount the container root (overlay)"; return 1; }
    mkdir -p "$root/.pod" && : >"$root/.pod/busybox" &&
        mount -o bind /bin/busybox "$root/.pod/busybox" &&
        mount -o remount,bind,ro "$root/.pod/busybox" || { msg="cannot mount the helper"; return 1; }
    # What to make inside the root: the fixed mounts, the working directory,
    # then one target per volume mount (mounts.sh, first pass).
    list=$R/c/$i.paths
    printf '%s\n' dir /proc dir /sys dir /dev file /etc/hosts file /etc/resolv.conf \
        file /etc/hostname dir "$c_workdir" >"$list"
    bad=
    mount_volume() {
        src=$R/vol/$1${4:+/$4}
        if [ -n "$4" ] && [ ! -e "$src" ]; then mkdir -p "$src" || { bad=1; return 1; }; fi
        if [ -d "$src" ]; then printf 'dir\n%s\n' "$2"; else printf 'file\n%s\n' "$2"; fi >>"$list"
    }
    . "$CFG/c/$i/mounts.sh"
    [ -z "$bad" ] || { msg="cannot create a volume's subPath"; return 1; }
    in_root sh -c "$PREP" <"$list" >"$list.real" ||
        { msg="cannot create mount points in the container root"; return 1; }
    exec 6<"$list.real"
    msg="cannot mount the container's /proc, /sys, /dev or /etc files"
    IFS= read -r t <&6; mount -t proc -o nosuid,nodev,noexec proc "$root$t" || return 1
    IFS= read -r t <&6; mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root$t" || return 1
    IFS= read -r t <&6; mount -o rbind $D "$root$t" || return 1
    for f in hosts resolv.conf hostname; do
        IFS= read -r t <&6; mount -o bind "$CFG/etc/$f" "$root$t" || return 1
    done
    IFS= read -r t <&6   # the working directory: made, nothing to mount
    mount_volume() {
        src=$R/vol/$1${4:+/$4}
        IFS= read -r t <&6
        mount -o bind "$src" "$root$t" || { bad=1; return 1; }
        if [ "$3" = ro ]; then mount -o remount,bind,ro "$root$t" || { bad=1; return 1; }; fi
    }
    . "$CFG/c/$i/mounts.sh"
    exec 6<&-
    [ -z "$bad" ] || { msg="cannot mount a volume"; return 1; }
    msg=
}

release_root() {
    umount -l "$root" 2>/dev/null
    rm -rf "$S/c/$i/$restarts" &
}

# backoff_ms N: the CrashLoopBackOff delay before restart number N+1 (kubelet:
# none before the first restart, then base, doubling, capped).
backoff_ms() {
    [ "$1" -gt 0 ] || { echo 0; return; }
    d=$POD_BACKOFF_MS k=1
    while [ $k -lt "$1" ] && [ $d -lt "$POD_BACKOFF_MAX_MS" ]; do d=$((d * 2)); k=$((k + 1)); done
    [ $d -gt "$POD_BACKOFF_MAX_MS" ] && d=$POD_BACKOFF_MAX_MS
    echo $d
}

# supervise I: run container I until it is done for good.
supervise() {
    i=$1
    . "$CFG/c/$i/spec.sh"   # c_name c_image c_workdir c_path c_argv0
    restarts=0 crashes=0
    while ! terminating; do
        msg= code=
        started=$EPOCHSECONDS
        if ! prepare_root; then
            reason=CreateContainerError
            [ -n "$msg" ] || msg="cannot set up the container root"
        else
            . "$CFG/c/$i/cmd.sh"   # set -- NAME=VALUE... -- ARGV...
            if exe=$(in_root sh -c "$LOOKUP" "$c_workdir" "$c_path" "$c_argv0"); then
                out=$R/c/$i.out err=$R/c/$i.err
                rm -f "$out" "$err"; mkfifo "$out" "$err"
                forward "$c_name" $restarts stdout <"$out" &
                fo=$!
                forward "$c_name" $restarts stderr <"$err" &
                fe=$!
                # setsid: the container gets its own process group, so that
                # everything it started can be killed with it.
                env -i setsid chroot "$root" /.pod/busybox sh -c "$LAUNCH" "$c_workdir" "$exe" "$@" \
                    </dev/null >"$out" 2>"$err" 3>&- 4>&- 5>&- &
                pid=$!
                echo $pid >"$R/c/$i.pid"
                ev started "$c_name" $restarts
                terminating && kill -TERM $pid 2>/dev/null
                wait $pid
                code=$?
                rm -f "$R/c/$i.pid"
                kill -KILL -$pid 2>/dev/null   # whatever it left behind
                # Let the forwarders flush what the container wrote (bounded:
                # a stray process may still hold the pipe).
                n=0
                while kill -0 $fo 2>/dev/null || kill -0 $fe 2>/dev/null; do
                    n=$((n + 1)); [ $n -gt 40 ] && { kill $fo $fe 2>/dev/null; break; }
                    sleep 0.05
                done
                wait $fo $fe 2>/dev/null
                ev exited "$c_name" $restarts $code
            else
                reason=StartError
                msg=$exe
            fi
        fi
        if [ -z "$code" ]; then
            code=128
            ev failed "$c_name" $restarts $reason "$(echo "$msg" | tr '\r\n' '  ')"
        fi
        release_root
        terminating && break
        case $POD_RESTART in
            Never) break ;;
            OnFailure) [ "$code" = 0 ] && break ;;
        esac
        # A container that ran long enough (kubelet: twice the maximum
        # delay) starts its backoff afresh.
        [ $((EPOCHSECONDS - started)) -ge $((POD_BACKOFF_MAX_MS / 500)) ] && crashes=0
        delay=$(backoff_ms $crashes)
        crashes=$((crashes + 1))
        if [ "$delay" -gt 0 ]; then
            ev waiting "$c_name" $restarts CrashLoopBackOff $delay
            left=$delay
            while [ $left -gt 0 ] && ! terminating; do
                step=$left; [ $step -gt 200 ] && step=200
                sleep "$((step / 1000)).$(printf %03d $((step % 1000)))"
                left=$((left - step))
            done
            terminating && break
        fi
        restarts=$((restarts + 1))
    done
    ev finished "$c_name" $restarts
}

# signal_all SIG: signal every running container (its main process).
signal_all() {
    for p in $R/c/*.pid; do
        [ -e "$p" ] || continue
        read -r pid <"$p" && kill -"$1" "$pid" 2>/dev/null
    done
}
any_running() {
    for p in $R/c/*.pid; do
        [ -e "$p" ] || continue
        read -r pid <"$p" && kill -0 "$pid" 2>/dev/null && return 0
    done
    return 1
}

# The control channel: "TERM GRACE|- ID" stops every container (SIGTERM,
# then SIGKILL after the grace period: GRACE, or the pod's when "-"); "KILL -
# ID" powers off at once. Each is acknowledged with "ack ID" (the host waits
# for it: QEMU drops what it did not hand over when the host hangs up).
control() {
    cr=$(printf '\r')
    while IFS=' ' read -r cmd arg id _ <&5; do
        cmd=${cmd%"$cr"} arg=${arg%"$cr"} id=${id%"$cr"}
        case $id in *[!0-9A-Za-z]*) id=invalid ;; esac
        case $cmd in
            TERM)
                echo "ack $id" >&5
                terminating && continue
                grace=$arg
                case $grace in ""|*[!0-9]*) grace=$POD_GRACE ;; esac
                : >$R/terminating
                ev terminating TERM $grace
                log "TERM: stopping the containers (grace ${grace}s)"
                signal_all TERM
                deadline=$((EPOCHSECONDS + grace))
                while any_running && [ "$EPOCHSECONDS" -lt $deadline ]; do sleep 0.1; done
                signal_all KILL
                # The supervisors report and the pod init powers off; this is
                # the backstop if something hangs.
                sleep 15
                fatal "containers did not stop after TERM"
                ;;
            KILL)
                echo "ack $id" >&5
                : >$R/terminating
                ev terminating KILL 0
                signal_all KILL
                finish
                ;;
            "") ;;
            *) log "unknown control message ignored" ;;
        esac
    done
}

control &
log "starting $POD_CONTAINERS container(s)"
pids=
i=0
while [ $i -lt "$POD_CONTAINERS" ]; do
    supervise $i &
    pids="$pids $!"
    i=$((i + 1))
done
# shellcheck disable=SC2086
wait $pids
ev done
finish
