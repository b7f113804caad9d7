using System.Runtime.InteropServices;

namespace SEmigrate.Guest.Fuse;

/// <summary>The few system calls .NET does not offer: a FUSE server's (/dev/fuse is read and written a
/// whole request or reply per call, and the file system is mounted with mount(2)), and prctl(2) for
/// the seccomp filter QEMU starts under (<see cref="Qemu.HugePageAdvice"/>), umask(2) (<see cref="PrivateByDefault"/>),
/// prctl(2), mlockall(2) and munlock(2) for a worker's own memory (<see cref="PrivateMemory"/>), lseek(2)'s SEEK_DATA
/// (<see cref="Qemu.RamErasure"/>).</summary>
internal static unsafe partial class Libc
{
    public const int ReadWrite = 2;
    public const int CloseOnExec = 0x80000;
    public const ulong NoSetUid = 2;
    public const ulong NoDevices = 4;
    public const int Detach = 2;
    public const int Interrupted = 4; // EINTR
    public const int NoEntry = 2; // ENOENT
    public const int NoDevice = 19; // ENODEV: unmounted

    [LibraryImport("libc", EntryPoint = "umask")]
    public static partial uint Umask(uint mask);

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
    public static partial nint Read(int fd, byte* buffer, nint count);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    public static partial nint Write(int fd, byte* buffer, nint count);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    [LibraryImport("libc", EntryPoint = "mount", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Mount(string source, string target, string type, ulong flags, string data);

    [LibraryImport("libc", EntryPoint = "umount2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Unmount(string target, int flags);

    [LibraryImport("libc", EntryPoint = "prctl", SetLastError = true)]
    public static partial int Prctl(int option, nuint arg2, nuint arg3, nuint arg4, nuint arg5);

    [LibraryImport("libc", EntryPoint = "lseek", SetLastError = true)]
    public static partial long Seek(int fd, long offset, int whence);

    [LibraryImport("libc", EntryPoint = "mlockall", SetLastError = true)]
    public static partial int LockAll(int flags);

    [LibraryImport("libc", EntryPoint = "munlock", SetLastError = true)]
    public static partial int Unlock(void* address, nuint length);

    public static string Error(string what) => $"{what}: {Marshal.GetLastPInvokeErrorMessage()} (errno {Marshal.GetLastPInvokeError()})";
}
