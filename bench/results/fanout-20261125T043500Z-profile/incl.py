# Inclusive sample share per process for chosen kernel/user symbols, from `perf script`.
import subprocess, sys, collections, re
data, pids = sys.argv[1], sys.argv[2].split(',')
syms = ["do_writev","__sys_recvfrom","do_epoll_wait","net_rx_action","process_backlog","tcp_v4_rcv","tcp_rcv_established","tcp_data_queue","tcp_ack","sock_def_readable","ep_poll_callback","try_to_wake_up","__tcp_send_ack","tcp_delack_timer","tcp_write_xmit","__tcp_transmit_skb","tcp_recvmsg","__tcp_cleanup_rbuf","skb_copy_datagram_iter","_copy_from_iter","Outbox::push","Session as core::future::future::Future>::poll","fanout::subscriber","Conn::frames","asm_sysvec_apic_timer_interrupt","asm_sysvec_call_function_single","schedule","tcp_sendmsg","__alloc_skb","kfree_skbmem","__kfree_skb","tcp_clean_rtx_queue","entry_SYSCALL_64","syscall_exit_to_user_mode","Hub::deliver_local","Waker::wake","wake_by_val","multi_thread::worker::Context::run_task","read_stamp","ScheduledIo"]
out = subprocess.run(["perf","script","-i",data,"-F","pid,tid,ip,sym"],capture_output=True,text=True).stdout
tot = collections.Counter(); hit = collections.defaultdict(collections.Counter); selfc=collections.defaultdict(collections.Counter)
for block in out.split("\n\n"):
    lines = block.strip().split("\n")
    if not lines or not lines[0].strip(): continue
    head = lines[0].split()
    pid = head[0].split('/')[0]
    if pid not in pids: continue
    tot[pid]+=1
    frames = [l.strip().split(None,1)[-1] for l in lines[1:] if l.strip()]
    if frames: selfc[pid][frames[0][:70]]+=1
    seen=set()
    for f in frames:
        for s in syms:
            if s in f and s not in seen:
                seen.add(s); hit[pid][s]+=1
for pid in pids:
    n=tot[pid]; print(f"== pid {pid}: {n} samples")
    for s in syms:
        if hit[pid][s]: print(f"  {100*hit[pid][s]/max(n,1):5.1f}%  {s}")
    print("  -- self top")
    for f,c in selfc[pid].most_common(25): print(f"  {100*c/n:5.1f}%  {f}")
