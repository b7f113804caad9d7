using SEmigrate.Guest.Fuse;

namespace SEmigrate.Guest;

/// <summary>A host worker holds keys and guest pages in the clear in its own memory: it makes itself
/// non-dumpable (no core dump, and no ptrace or /proc/PID/mem by anyone but root), and a main host or a
/// source locks its memory (no page of it goes to swap). Pages are locked as they are first touched
/// (MCL_ONFAULT), so nothing reserved is populated; a guest's memory mapped from its file is unlocked
/// again (<see cref="Unlock"/>): it is the file's. Only with root's right to lock without limit: under
/// RLIMIT_MEMLOCK, locking future mappings would make the runtime's own allocations fail.</summary>
public static class PrivateMemory
{
    private const int SetDumpable = 4; // PR_SET_DUMPABLE
    private const int Current = 1, Future = 2, OnFault = 4; // MCL_*

    /// <summary>Makes this process non-dumpable, and locks its memory if asked; what could not be done, or null.</summary>
    public static string? Apply(bool lockMemory)
    {
        if (Libc.Prctl(SetDumpable, 0, 0, 0, 0) != 0)
        {
            return Libc.Error("prctl(PR_SET_DUMPABLE, 0)");
        }
        if (!lockMemory)
        {
            return null;
        }
        if (!Environment.IsPrivilegedProcess)
        {
            return "not root: memory not locked (keys and guest pages may go to swap)";
        }
        return Libc.LockAll(Current | Future | OnFault) == 0 ? null : $"{Libc.Error("mlockall")}: memory not locked (keys and guest pages may go to swap)";
    }

    /// <summary>Lets a mapping of a guest's memory file go unlocked (a no-op where nothing is locked): a source
    /// reads every page of a guest as large as its host's memory.</summary>
    internal static unsafe void Unlock(byte* address, long length)
    {
        var page = (nuint)Environment.SystemPageSize;
        var start = (nuint)address & ~(page - 1);
        _ = Libc.Unlock((void*)start, (nuint)address + (nuint)length - start);
    }
}
