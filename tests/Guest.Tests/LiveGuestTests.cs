using SEmigrate.Guest.Fuse;
using SEmigrate.Guest.Qemu;

namespace SEmigrate.Guest.Tests;

/// <summary>A real running guest moved the way SEmigrate moves it: paused at the source, its device
/// state saved without RAM, then continued by another QEMU whose RAM file this process serves over FUSE.
/// The guest's workload checks every page of its memory on every pass and keeps rewriting some: it must
/// go on past the move and past the server evicting its whole RAM, with no page ever wrong.</summary>
public sealed class LiveGuestTests : IAsyncLifetime
{
    private const int MemoryMiB = 256;
    private readonly string dir = Directory.CreateTempSubdirectory("semigrate-live-").FullName;

    public ValueTask InitializeAsync() => ValueTask.CompletedTask;

    public ValueTask DisposeAsync()
    {
        Directory.Delete(dir, recursive: true);
        return ValueTask.CompletedTask;
    }

    [Fact]
    public async Task A_paused_guest_continues_on_a_FUSE_served_RAM_file_and_its_workload_finds_no_wrong_page()
    {
        var ct = TestContext.Current.CancellationToken;
        await QemuGuest.PrepareKitAsync(dir, new GuestSpec(MemoryMiB, [], WorkloadMiB: 48), ct);
        var (ram, deviceState) = (Path.Combine(dir, "source.ram"), Path.Combine(dir, "device.state"));

        WorkloadPass atPause;
        await using (var source = await LiveGuest.StartAsync(dir, MemoryMiB, ram, Path.Combine(dir, "source.serial"), incoming: false, ct))
        {
            await source.WaitForAsync("SEMIGRATE-READY", QemuGuest.BootTimeout, ct);
            await UntilAsync(() => source.Passes.Count >= 2, TimeSpan.FromMinutes(2), ct);
            await source.PauseAsync(ct);
            atPause = source.Passes[^1];
            await source.SaveDeviceStateAsync(deviceState, ct);
        }
        Assert.InRange(new FileInfo(deviceState).Length, 1, 4 << 20); // the VM core without its RAM

        var mount = Path.Combine(dir, "mnt");
        var backing = new FileRam(ram);
        await using var fuse = await FuseRamFile.MountAsync(mount, "ram", backing, readaheadBytes: 64 << 10);
        await using var main = await LiveGuest.StartAsync(dir, MemoryMiB, fuse.FilePath, Path.Combine(dir, "main.serial"), incoming: true, ct);
        await main.LoadDeviceStateAsync(deviceState, ct);
        await main.ContinueAsync(ct);
        await UntilAsync(() => main.Passes.Count >= 2, TimeSpan.FromMinutes(2), ct);
        var faulted = fuse.Traffic.Read;
        // QEMU runs under its own seccomp filters besides those it inherits (this process's, a container's)
        // and the one it is started under (HugePageAdvice's).
        static async Task<int> FiltersAsync(string pid, CancellationToken ct) => int.Parse((await File.ReadAllLinesAsync($"/proc/{pid}/status", ct))
            .Single(l => l.StartsWith("Seccomp_filters:", StringComparison.Ordinal)).Split(':')[1].Trim(), System.Globalization.CultureInfo.InvariantCulture);
        var (filters, inherited) = (await FiltersAsync($"{main.Pid}", ct), await FiltersAsync("self", ct));
        TestContext.Current.TestOutputHelper?.WriteLine($"QEMU {main.Pid}: {filters} seccomp filters, {inherited} inherited from the test");
        Assert.True(filters >= inherited + 2, $"QEMU runs under {filters} seccomp filter(s), {inherited} of them inherited: its -sandbox is not on");
        // It runs as its own user, not root (real, effective, saved and file-system uid alike).
        var uids = (await File.ReadAllLinesAsync($"/proc/{main.Pid}/status", ct)).Single(l => l.StartsWith("Uid:", StringComparison.Ordinal))
            .Split((char[])['\t', ' '], StringSplitOptions.RemoveEmptyEntries)[1..];
        var qemuUid = (await File.ReadAllLinesAsync("/etc/passwd", ct)).Single(l => l.StartsWith(QemuUser.Name + ":", StringComparison.Ordinal)).Split(':')[2];
        Assert.All(uids, u => Assert.Equal(qemuUid, u));
        // Its core dump would leave the guest's RAM out: the RAM file's mapping is marked "do not dump" (dd).
        var smaps = await File.ReadAllLinesAsync($"/proc/{main.Pid}/smaps", ct);
        var ramFlags = smaps.SkipWhile(l => !l.EndsWith(fuse.FilePath, StringComparison.Ordinal)).First(l => l.StartsWith("VmFlags:", StringComparison.Ordinal));
        Assert.Contains(" dd", ramFlags, StringComparison.Ordinal);

        // The server evicts all of the guest's RAM (dirty pages come back first); the guest reads it again.
        fuse.Invalidate(0, (long)MemoryMiB << 20);
        var evictedAt = main.Passes[^1].Pass;
        await UntilAsync(() => main.Passes[^1].Pass >= evictedAt + 2, TimeSpan.FromMinutes(2), ct);

        var passes = main.Passes;
        TestContext.Current.TestOutputHelper?.WriteLine($"paused at {atPause}; at the main host {string.Join("; ", passes)}; FUSE {fuse.Traffic}, {faulted} bytes read before the eviction");
        Assert.InRange(passes[0].Pass, atPause.Pass + 1, atPause.Pass + 2); // it went on where it stopped (a line the pause cut is lost)
        Assert.All(passes, p => Assert.Equal(0, p.Errors));
        Assert.True(faulted >= 48 << 20, $"{faulted} bytes paged in through FUSE before the eviction");
        Assert.True(fuse.Traffic.Read > faulted && fuse.Traffic.Written > 0, $"{fuse.Traffic}");
        // QEMU ran without its huge-page advice: a fault reads what the readahead allows, not the
        // 2 MiB around it (1 MiB reads, in pairs, with the advice).
        Assert.InRange(backing.LargestRead, 4096, 64 << 10);
    }

    private static async Task UntilAsync(Func<bool> done, TimeSpan timeout, CancellationToken ct)
    {
        var until = DateTime.UtcNow + timeout;
        while (!done())
        {
            Assert.True(DateTime.UtcNow < until, "timed out");
            await Task.Delay(200, ct);
        }
    }

    /// <summary>The source's RAM file as the backing of the served one (a stand-in for the pager).</summary>
    private sealed class FileRam(string path) : IRamFile
    {
        private readonly Microsoft.Win32.SafeHandles.SafeFileHandle file = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);

        public long Size => RandomAccess.GetLength(file);

        private int largestRead;

        public int LargestRead => Volatile.Read(ref largestRead);

        public async ValueTask ReadAsync(long offset, Memory<byte> data)
        {
            for (int seen; data.Length > (seen = Volatile.Read(ref largestRead)) && Interlocked.CompareExchange(ref largestRead, data.Length, seen) != seen;)
            {
            }
            for (var done = 0; done < data.Length;)
            {
                var n = await RandomAccess.ReadAsync(file, data[done..], offset + done);
                if (n == 0)
                {
                    throw new EndOfStreamException($"RAM file ends at 0x{offset + done:x}");
                }
                done += n;
            }
        }

        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data) => RandomAccess.WriteAsync(file, data, offset);
    }
}
