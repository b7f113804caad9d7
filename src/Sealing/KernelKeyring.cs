using System.Runtime.InteropServices;

namespace SEmigrate.Sealing;

/// <summary>Keys kept in the kernel's keyring instead of a file: this user's persistent keyring, which
/// outlives the process that wrote a key (a worker restarted mid-migration finds it) but not the boot,
/// and is never written to disk (no swap on our hosts; a key's payload is wiped when it is freed).
/// A file overwritten in place can keep its old blocks; a key erased here leaves nothing to recover.
/// Who may read it is as for a 0600 file of this user: a process of this user (links the persistent
/// keyring), or root. The kernel must have keyrings and persistent keyrings (CONFIG_KEYS,
/// CONFIG_PERSISTENT_KEYRINGS) and let the worker call keyctl (a container's default seccomp
/// profile does not).</summary>
public static partial class KernelKeyring
{
    private const string Type = "user";
    private const int KeySpecProcessKeyring = -2;
    private const long Search = 10, Read = 11, Invalidate = 21, GetPersistent = 22;

    /// <summary>Stores <paramref name="key"/> under <paramref name="description"/>, replacing one there.</summary>
    public static void Save(string description, DataKey key)
    {
        var keyring = Persistent();
        var payload = key.Bytes.ToArray();
        try
        {
            Check(AddKey(Syscalls.AddKey, Type, description, payload, payload.Length, keyring), $"storing key '{description}'");
        }
        finally
        {
            Array.Clear(payload);
        }
    }

    /// <summary>The key stored under <paramref name="description"/>, or null when there is none.</summary>
    public static DataKey? Load(string description)
    {
        if (Find(description) is not { } id)
        {
            return null;
        }
        var buffer = new byte[DataKey.Size];
        try
        {
            var read = KeyctlRead(Syscalls.Keyctl, Read, id, buffer, buffer.Length);
            if (read < 0 && IsGone(Marshal.GetLastPInvokeError()))
            {
                return null; // erased since it was found
            }
            var length = Check(read, $"reading key '{description}'");
            return length == DataKey.Size ? DataKey.FromBytes(buffer)
                : throw new InvalidOperationException($"key '{description}' in the kernel keyring is {length} bytes, not a data key");
        }
        finally
        {
            Array.Clear(buffer);
        }
    }

    public static bool Has(string description) => Find(description) is not null;

    /// <summary>Erases the key stored under <paramref name="description"/> (the kernel unlinks it at once and
    /// wipes it); false when there was none.</summary>
    public static bool Erase(string description)
    {
        if (Find(description) is not { } id)
        {
            return false;
        }
        var result = KeyctlInt(Syscalls.Keyctl, Invalidate, id, 0);
        if (result < 0 && IsGone(Marshal.GetLastPInvokeError()))
        {
            return false; // erased by another meanwhile
        }
        Check(result, $"erasing key '{description}'");
        return true;
    }

    private static int? Find(string description)
    {
        var found = KeyctlSearch(Syscalls.Keyctl, Search, Persistent(), Type, description, 0);
        if (found >= 0)
        {
            return (int)found;
        }
        var errno = Marshal.GetLastPInvokeError();
        return IsGone(errno) ? null : throw Failure(errno, $"looking up key '{description}'");
    }

    private static bool IsGone(int errno) => errno is 126 /* ENOKEY */ or 127 /* EKEYEXPIRED */ or 128 /* EKEYREVOKED */;

    /// <summary>This user's persistent keyring, linked into the process's keyring (which makes its keys
    /// possessed, so readable, by this process); asking again resets its expiry.</summary>
    private static int Persistent() =>
        (int)Check(KeyctlInt(Syscalls.Keyctl, GetPersistent, -1, KeySpecProcessKeyring), "getting the persistent keyring");

    private static long Check(long result, string doing) => result >= 0 ? result : throw Failure(Marshal.GetLastPInvokeError(), doing);

    private static InvalidOperationException Failure(int errno, string doing) => new(
        $"the kernel keyring failed {doing}: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno}); SEmigrate keeps data keys there, never on disk, " +
        "so it needs a kernel with keyrings and persistent keyrings (CONFIG_KEYS, CONFIG_PERSISTENT_KEYRINGS) and keyctl allowed");

    /// <summary>The system call numbers: glibc's keyctl wrappers are in libkeyutils, which hosts need not have.</summary>
    private static class Syscalls
    {
        public static readonly long AddKey = RuntimeInformation.ProcessArchitecture switch
        {
            Architecture.X64 => 248,
            Architecture.Arm64 => 217,
            var other => throw new PlatformNotSupportedException($"the kernel keyring's system calls are not known on {other}"),
        };

        public static readonly long Keyctl = AddKey + 2;
    }

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial long AddKey(long number, string type, string description, byte[] payload, nint length, int keyring);

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial long KeyctlSearch(long number, long command, int keyring, string type, string description, int destination);

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long KeyctlRead(long number, long command, int key, byte[] buffer, nint length);

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long KeyctlInt(long number, long command, int first, int second);
}
