using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;
using SEmigrate.Guest.Memory;

namespace SEmigrate.Guest.Tests;

/// <summary>A main host's or source's worker locks its memory (mlockall, MCL_FUTURE | MCL_ONFAULT: every
/// mapping it makes is locked as it is touched); a guest's memory it maps from its file must not be, or
/// reading a guest as large as the host would pin all of it.</summary>
[Collection(nameof(PrivateMemoryTests))]
public sealed class PrivateMemoryTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("semigrate-lock-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    [Fact]
    public void A_guests_memory_mapped_by_a_worker_that_locks_its_own_is_not_locked()
    {
        if (!Environment.IsPrivilegedProcess)
        {
            Assert.Skip("locking future mappings needs root (RLIMIT_MEMLOCK), as workers lock only as root");
        }
        var (guestFile, otherFile) = (Path.Combine(dir, "guest.img"), Path.Combine(dir, "other.img"));
        foreach (var f in new[] { guestFile, otherFile })
        {
            using var s = File.Create(f);
            s.SetLength(8 << 20);
        }
        Assert.Equal(0, LockAll(Future | OnFault));
        try
        {
            using var guest = GuestMemory.OpenImage(guestFile);
            // The same kind of mapping, made without GuestMemory: locked, which shows the check can see it.
            using var other = MemoryMappedFile.CreateFromFile(otherFile, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            using var view = other.CreateViewAccessor(0, 8 << 20, MemoryMappedFileAccess.Read);
            _ = guest.Page(1)[0];
            _ = view.ReadByte(4096);
            var flags = Flags();
            Assert.True(flags.TryGetValue(otherFile, out var locked) && (locked.Contains("lf") || locked.Contains("lo")),
                $"the plain mapping of {otherFile} is not locked: {locked}");
            Assert.True(flags.TryGetValue(guestFile, out var guestFlags), "no mapping of the guest's file");
            Assert.DoesNotContain("lf", guestFlags);
            Assert.DoesNotContain("lo", guestFlags);
        }
        finally
        {
            UnlockAll();
        }
    }

    /// <summary>Each mapped file's VmFlags in /proc/self/smaps (the last mapping of it).</summary>
    private static Dictionary<string, string[]> Flags()
    {
        var flags = new Dictionary<string, string[]>(StringComparer.Ordinal);
        string? file = null;
        foreach (var line in File.ReadLines("/proc/self/smaps"))
        {
            var first = line.Split(' ', 2)[0];
            if (first.Contains('-', StringComparison.Ordinal) && first.Replace("-", "", StringComparison.Ordinal).All(char.IsAsciiHexDigit))
            {
                var fields = line.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries); // range, perms, offset, device, inode, path
                file = fields.Length == 6 ? fields[5].Trim() : null;
            }
            else if (line.StartsWith("VmFlags:", StringComparison.Ordinal) && file is not null)
            {
                flags[file] = line["VmFlags:".Length..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            }
        }
        return flags;
    }

    private const int Future = 2, OnFault = 4;

    [DllImport("libc", EntryPoint = "mlockall", SetLastError = true)]
    private static extern int LockAll(int flags);

    [DllImport("libc", EntryPoint = "munlockall", SetLastError = true)]
    private static extern int UnlockAll();
}

/// <summary>Locking future mappings is process-wide: run alone. Beside the FUSE tests of this process it
/// deadlocked once (a clean-clone CI: a thread faulting the process's own FUSE file, its server thread
/// waiting on the same memory map).</summary>
[CollectionDefinition(nameof(PrivateMemoryTests), DisableParallelization = true)]
public sealed class PrivateMemoryCollection;
