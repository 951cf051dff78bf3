#!/bin/sh
# The guest's side of tests/vm/lib.sh: names the guest, brings up its network, then runs, one
# after the other, the scripts the host drops into /host/ctl/NAME/N.sh, writing N.out and N.rc.
name=$1 ip=$2 hosts=$3
hostname "$name"
echo "$name" >/etc/hostname
{
    echo "127.0.0.1 localhost"
    for h in $(echo "$hosts" | tr '+' ' '); do echo "${h%%,*} ${h#*,}"; done
} >/etc/hosts
echo "hosts: files" >/etc/nsswitch.conf
ip link set lo up
ip addr add "$ip/24" dev eth0
ip link set eth0 up
ctl=/host/ctl/$name
echo "nsmvm: $name ($ip) ready at $(cut -d' ' -f1 /proc/uptime) s after boot; kernel $(uname -r)"
cut -d' ' -f1 /proc/uptime >"$ctl/ready"
n=0
while :; do
    if [ -e "$ctl/$n.sh" ]; then
        /bin/bash "$ctl/$n.sh" >"$ctl/$n.out" 2>&1 </dev/null
        echo $? >"$ctl/$n.rc.tmp"
        mv "$ctl/$n.rc.tmp" "$ctl/$n.rc"
        n=$((n + 1))
    else
        sleep 0.1
    fi
done
