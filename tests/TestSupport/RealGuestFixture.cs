using SEmigrate.Guest.Qemu;
using Xunit;

namespace SEmigrate.TestSupport;

/// <summary>A real Linux guest booted under QEMU (256 MiB; two marker processes and one that freed
/// its memory), shared by every test process of one test run: the first process to ask boots it
/// (~10 s), the others wait on a lock and reuse the dump. A later run boots afresh.</summary>
public sealed class RealGuestFixture : IAsyncLifetime
{
    public static readonly GuestSpec Spec = new(256,
    [
        new GuestProcess("vaultdb", 16, "VAULTDBMARK"),
        new GuestProcess("webapp", 8, "WEBAPPMARK"),
        new GuestProcess("scratch", 24, "STALEMARK", Freed: true),
    ]);

    /// <summary>Where guests are booted: a test source worker takes this as its guests folder.</summary>
    public static string Folder => Path.Combine(Path.GetTempPath(), "semigrate-test-guests");

    public BootedGuest Guest { get; private set; } = null!;

    public async ValueTask InitializeAsync()
    {
        var root = Folder;
        Directory.CreateDirectory(root);
        // One run = one `dotnet test`, the parent of every test process.
        var run = ParentProcessId();
        var dir = Path.Combine(root, $"guest-{run}");
        await using var lockFile = await LockAsync(Path.Combine(root, ".lock"));
        foreach (var stale in Directory.GetDirectories(root, "guest-*").Where(d => d != dir && Directory.GetLastWriteTimeUtc(d) < DateTime.UtcNow.AddHours(-1)))
        {
            Directory.Delete(stale, recursive: true);
        }
        try
        {
            Guest = QemuGuest.Load(dir);
        }
        catch (FileNotFoundException)
        {
            Guest = await QemuGuest.BootAndDumpAsync(Spec, dir);
        }
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

    private static async Task<FileStream> LockAsync(string path)
    {
        for (var i = 0; ; i++)
        {
            try
            {
                return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException) when (i < 1800)
            {
                await Task.Delay(100);
            }
        }
    }

    private static int ParentProcessId()
    {
        // /proc/self/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after ')'.
        var stat = File.ReadAllText("/proc/self/stat");
        return int.Parse(stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture);
    }
}
