using System.Text.Json;
using SEmigrate.TestSupport;

namespace SEmigrate.Workers.Tests;

public class GuestCommandTests(RealGuestFixture fixture) : IClassFixture<RealGuestFixture>
{
    private static readonly Dictionary<string, string> NoEnvironment = [];

    [Fact]
    public async Task Introspect_json_gives_release_tasks_zones_processes_and_classes_that_add_up()
    {
        var map = Path.Combine(Directory.CreateTempSubdirectory("semigrate-cli-").FullName, "classes.map");
        var r = await SemigrateProcess.RunAsync(NoEnvironment, "guest", "introspect", "--image", fixture.Guest.DumpPath,
            "--kernel", fixture.Guest.KernelPath, "--plain-process", "vaultdb", "--map", map, "--json");
        Assert.True(r.ExitCode == 0, r.Stderr + r.Stdout);
        using var json = JsonDocument.Parse(r.Stdout);
        var root = json.RootElement;
        Assert.Equal(fixture.Guest.GroundTruth.Release, root.GetProperty("release").GetString());
        Assert.Contains(root.GetProperty("tasks").EnumerateArray(), t => t.GetProperty("comm").GetString() == "vaultdb" && t.GetProperty("pid").GetInt32() > 0);
        Assert.All(root.GetProperty("zones").EnumerateArray(),
            z => Assert.Equal(z.GetProperty("nrFreePages").GetInt64(), z.GetProperty("freePages").GetInt64()));
        var vault = fixture.Guest.GroundTruth.Processes.Single(p => p.Comm == "vaultdb");
        Assert.Contains(root.GetProperty("processes").EnumerateArray(),
            p => p.GetProperty("comm").GetString() == "vaultdb" && p.GetProperty("pages").GetInt32() == vault.Pfns.Count);
        var classes = root.GetProperty("classes");
        var sum = classes.GetProperty("zero").GetUInt64() + classes.GetProperty("plain").GetUInt64() + classes.GetProperty("sealed").GetUInt64();
        Assert.Equal(root.GetProperty("guestPages").GetUInt64(), sum);
        Assert.Equal(65600UL, sum); // 256 MiB of RAM and QEMU's 256 KiB BIOS ROM
        Assert.True(File.Exists(map));
        Directory.Delete(Path.GetDirectoryName(map)!, recursive: true);
    }

    [Fact]
    public async Task Introspect_text_names_the_kernel_and_the_processes()
    {
        var r = await SemigrateProcess.RunAsync(NoEnvironment, "guest", "introspect", "--image", fixture.Guest.DumpPath,
            "--kernel", fixture.Guest.KernelPath);
        Assert.Equal(0, r.ExitCode);
        Assert.Contains($"kernel     {fixture.Guest.GroundTruth.Release}", r.Stdout, StringComparison.Ordinal);
        Assert.Matches(@"process\s+vaultdb\s+pid \d+\s+\d+ pages", r.Stdout);
        Assert.Matches(@"classes\s+zero \d+, plain 0, sealed \d+ \(of 65600 guest pages\)", r.Stdout);
    }

    [Fact]
    public async Task Introspect_of_a_missing_file_is_one_clear_line()
    {
        var r = await SemigrateProcess.RunAsync(NoEnvironment, "guest", "introspect", "--image", "/nonexistent/memory.elf",
            "--kernel", fixture.Guest.KernelPath);
        Assert.Equal(2, r.ExitCode);
        Assert.Equal("semigrate: /nonexistent/memory.elf does not exist", r.Stderr.Trim());
    }

    [Fact]
    public async Task Boot_refuses_a_bad_process_spec_before_starting_anything()
    {
        var r = await SemigrateProcess.RunAsync(NoEnvironment, "guest", "boot", "--process", "bad spec", "--out", "/tmp/unused-guest");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("is not NAME:MIB:MARKER", r.Stderr, StringComparison.Ordinal);
        Assert.False(Directory.Exists("/tmp/unused-guest"));
    }
}
