using System.Diagnostics;
using System.Runtime.InteropServices;
using SEmigrate.Guest.Fuse;

namespace SEmigrate.Guest.Qemu;

/// <summary>Starts QEMU without its huge-page advice. QEMU advises huge pages for all guest RAM
/// (madvise MADV_HUGEPAGE, unconditionally: no option turns it off), and on a file mapping the kernel
/// then reads the whole aligned 2 MiB around every page fault, whatever the file's readahead says. For
/// RAM served over FUSE that is 512 pages paged in to touch one. QEMU starts under a seccomp filter
/// that makes that one call return 0 and do nothing; everything else runs as ever. The filter is set
/// on a thread of its own that starts QEMU and ends, so it reaches QEMU (a child inherits its parent
/// thread's filters) and nothing else of this process.</summary>
public static class HugePageAdvice
{
    public static Process StartWithout(ProcessStartInfo start)
    {
        Process? started = null;
        Exception? failed = null;
        var starter = new Thread(() =>
        {
            try
            {
                Install();
                started = Process.Start(start) ?? throw new InvalidOperationException($"could not start {start.FileName}");
            }
#pragma warning disable CA1031 // handed to the caller's thread
            catch (Exception e)
#pragma warning restore CA1031
            {
                failed = e;
            }
        }) { IsBackground = true, Name = "qemu starter" };
        starter.Start();
        starter.Join();
        return started ?? throw (failed ?? new InvalidOperationException($"could not start {start.FileName}"));
    }

    private const int SetNoNewPrivileges = 38; // PR_SET_NO_NEW_PRIVS
    private const int SetSeccomp = 22; // PR_SET_SECCOMP
    private const int ModeFilter = 2; // SECCOMP_MODE_FILTER
    private const uint ArchX86_64 = 0xC000003E; // AUDIT_ARCH_X86_64
    private const uint Madvise = 28; // __NR_madvise on x86-64
    private const uint AdviseHugePage = 14; // MADV_HUGEPAGE
    private const uint ReturnErrno = 0x00050000; // SECCOMP_RET_ERRNO (errno 0: skipped, returns 0)
    private const uint Allow = 0x7fff0000; // SECCOMP_RET_ALLOW

    [StructLayout(LayoutKind.Sequential)]
    private struct Instruction(ushort code, byte jumpTrue, byte jumpFalse, uint k)
    {
        public ushort Code = code;
        public byte JumpTrue = jumpTrue;
        public byte JumpFalse = jumpFalse;
        public uint K = k;
    }

    [StructLayout(LayoutKind.Sequential)]
    private unsafe struct FilterProgram
    {
        public ushort Length;
        public Instruction* Filter;
    }

    /// <summary>On the calling thread: madvise(_, _, MADV_HUGEPAGE) returns 0 without effect.</summary>
    private static unsafe void Install()
    {
        const ushort load = 0x20, jumpIfEqual = 0x15, ret = 0x06; // BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
        // struct seccomp_data: nr at 0, arch at 4, args[i] at 16 + 8 i (the advice is args[2], its low half).
        Span<Instruction> filter =
        [
            new(load, 0, 0, 4),
            new(jumpIfEqual, 0, 5, ArchX86_64),
            new(load, 0, 0, 0),
            new(jumpIfEqual, 0, 3, Madvise),
            new(load, 0, 0, 32),
            new(jumpIfEqual, 0, 1, AdviseHugePage),
            new(ret, 0, 0, ReturnErrno),
            new(ret, 0, 0, Allow),
        ];
        fixed (Instruction* f = filter)
        {
            var program = new FilterProgram { Length = (ushort)filter.Length, Filter = f };
            // No new privileges: what a filter needs without CAP_SYS_ADMIN, and QEMU needs none anyway.
            if (Libc.Prctl(SetNoNewPrivileges, 1, 0, 0, 0) != 0 || Libc.Prctl(SetSeccomp, ModeFilter, (nuint)(&program), 0, 0) != 0)
            {
                throw new InvalidOperationException(Libc.Error("cannot set QEMU's seccomp filter"));
            }
        }
    }
}
