#!/bin/sh
# /init of the vmgate test guest (busybox sh, PID 1).
#
# Every loop here must block or back off: the guest has to stay near 0% host CPU while
# idle, because tests and benchmarks run beside it on the same cores, and under TCG
# each guest wake-up costs about a millisecond of host time.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root TERM=linux PS1='guest# '
umask 022
cd /

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# debugfs shows whether a host client is attached to a virtio-serial port (see below).
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mkdir -p /run /tmp /root
hostname testguest

# Loads the modules listed in /lib/modules/$1, one per line in dependency order (the kit
# leaves out those built into the kernel).
load_modules() {
    while read -r m; do
        insmod "/lib/modules/$m.ko" || echo "vmgate-guest: insmod $m failed" >/dev/ttyS0
    done <"/lib/modules/$1"
}

load_modules load-at-boot

# A sleep that forks nothing: `read -t` on a FIFO nobody writes to just times out.
# Forking `sleep` (or `cat`) several times a second costs several percent of a host core.
mkfifo /run/nap

# True when a host client is connected to the port, per virtio_console's debugfs file.
# Without debugfs, answer "connected" and let the caller's back-off take over.
host_connected() {
    [ -r "$1" ] || return 0
    while read -r key value; do
        if [ "$key" = host_connected: ]; then
            [ "$value" = 1 ]
            return
        fi
    done <"$1"
    return 0
}

# Echoes every byte on a port back. The port stays open (fd 3) for the guest's whole life;
# while a host client is connected `cat` blocks in read, and once the client leaves a read
# returns EOF at once, so the loop polls the connection state without forking until a
# client comes back. Each EOF `cat` read is counted in /run/<port name>.eofs, so tests can
# see that a host-side EOF reached the guest. Every wake-up costs about a millisecond of host CPU under TCG, so it
# polls five times a second only for the first 30 s after boot or after a client left
# (when tests connect), then once a second: a late first client waits at most a second.
echo_port() {
    exec 3<>"/dev/$1" 4<>/run/nap
    polls=0
    eofs=0
    while true; do
        if host_connected "/sys/kernel/debug/virtio-ports/$1"; then
            cat <&3 >&3
            eofs=$((eofs + 1))
            echo "$eofs" >"/run/$2.eofs"
            polls=0
        fi
        if [ "$polls" -lt 150 ]; then
            polls=$((polls + 1))
            read -t 0.2 _ <&4
        else
            read -t 1 _ <&4
        fi
    done
}

# The kernel adds virtio-serial ports, and then their names, one control message at a time
# after the driver loaded, so init may look before all are there: wait (at most 10 s) for
# the vmgate.ports=N named ports the kit's command line announces.
named_ports() {
    n=0
    for port in /sys/class/virtio-ports/*; do
        # The kernel creates a port's `name` file when the port's name arrives.
        [ -r "$port/name" ] && n=$((n + 1))
    done
    echo "$n"
}
want=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vmgate.ports=*) want=${arg#vmgate.ports=} ;;
    esac
done
waits=0
while [ "$(named_ports)" -lt "$want" ]; do
    if [ "$waits" -ge 200 ]; then
        echo "vmgate-guest: only $(named_ports) of $want virtio-serial ports after 10 s" >/dev/ttyS0
        break
    fi
    waits=$((waits + 1))
    read -t 0.05 _ <>/run/nap
done
[ "$waits" -gt 0 ] && echo "vmgate-guest: waited $((waits * 50)) ms for the virtio-serial ports" >/dev/ttyS0

channels=
for port in /sys/class/virtio-ports/*; do
    [ -r "$port/name" ] || continue
    read -r name <"$port/name"
    dev=${port##*/}
    channels="$channels $name"
    echo "vmgate-guest: channel $name on /dev/$dev" >/dev/ttyS0
    case "$name" in
        test.echo) echo_port "$dev" "$name" & ;;
    esac
done

# The VGA console shows only static text, so screenshots of a booted guest compare equal:
# clear it, hide the blinking cursor, never blank it (consoleblank=0 on the command line).
printf '\033[2J\033[H\033[?25l' >/dev/tty1
cat >/dev/tty1 <<BANNER
vmgate test guest
=================

hostname: testguest
serial:   ttyS0 (shell)
channels:${channels:- none}
(channel test.echo echoes every byte back)

BANNER

# Starts "$@" detached, with default signal handling. A plain `&` will not do for the
# shells: a shell without job control (like this one) starts background jobs with SIGINT
# and SIGQUIT ignored, ash keeps a signal ignored on entry ignored for good, and so Ctrl-C
# would never interrupt anything. Run in the foreground instead, the first setsid becomes
# a process group leader, which makes the second fork, return at once and leave its child
# running in a new session.
detach() {
    setsid setsid "$@"
}

# A shell with the tty as its controlling terminal (setsid -c), so Ctrl-C reaches the
# foreground job; /dev/console can never be a controlling terminal, hence the real ttys.
# The loop respawns the shell after `exit`, at most once a second.
for tty in ttyS0 tty1; do
    detach sh -c 'while true; do setsid -c sh -i <>"/dev/$1" >&0 2>&1; sleep 1; done' shell "$tty"
done

echo vmgate-guest-ready >/dev/ttyS0

# The CD-ROM drive (IDE, CD-ROM and ISO 9660 modules) comes up in the background: probing
# the IDE bus takes about a second under TCG, which the boot need not wait for. The guest
# then polls the drive for medium changes, as systemd's udev rules set up on a distribution
# (there every 2 s): without polling, Linux notices an inserted medium only when a read
# fails. /run/cdrom.ready tells tests the drive is usable.
(
    load_modules load-when-ready
    [ -w /sys/block/sr0/events_poll_msecs ] && echo 500 >/sys/block/sr0/events_poll_msecs
    : >/run/cdrom.ready
) &

# PID 1 must never exit. `wait` blocks while the echo loop runs, reaping orphans meanwhile;
# the sleep keeps the loop from spinning when there is no echo channel to wait for.
while true; do
    wait
    sleep 60
done
