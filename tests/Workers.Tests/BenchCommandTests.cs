using System.Text.Json;
using SEmigrate.TestSupport;

namespace SEmigrate.Workers.Tests;

/// <summary>The benchmarks run and report every figure they promise. (Whether targets are met is read
/// from their output on a quiet machine, never asserted here.)</summary>
public class BenchCommandTests(RealGuestFixture fixture) : IClassFixture<RealGuestFixture>
{
    [Fact]
    public async Task Bench_paging_json_has_a_figure_set_for_every_mode()
    {
        var env = new Dictionary<string, string>(await ServicesScript.SettingsAsync());
        var r = await SemigrateProcess.RunAsync(env, "bench", "paging", "--mib", "4", "--page-ins", "50", "--warmup-mib", "8", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        using var json = JsonDocument.Parse(r.Stdout);
        var modes = json.RootElement.GetProperty("modes").EnumerateArray().ToList();
        Assert.Equal(["semigrate", "allenc", "noenc"], modes.Select(m => m.GetProperty("mode").GetString()));
        foreach (var m in modes)
        {
            foreach (var figure in new[] { "pageInP50Us", "pageInP99Us", "rawRoundTripP50Us", "bulkMBps", "rawBulkMBps" })
            {
                Assert.True(m.GetProperty(figure).GetDouble() > 0, $"{figure} of {m.GetProperty("mode")}");
            }
            var cpu = m.GetProperty("cpuSecondsPerGiB");
            Assert.True(cpu.GetProperty("sender").GetDouble() > 0);
            Assert.True(cpu.GetProperty("memoryServer").GetDouble() >= 0); // 10 ms ticks: a tiny run may show none
            Assert.True(cpu.GetProperty("broker").GetDouble() >= 0);
            var sealing = m.GetProperty("sealGBps").GetDouble();
            Assert.True(m.GetProperty("mode").GetString() == "noenc" ? sealing == 0 : sealing > 0);
            Assert.True(m.GetProperty("rawAesGcmGBps").GetDouble() >= 0);
        }
    }

    [Fact]
    public async Task Bench_introspect_measures_a_guest_it_is_given()
    {
        var r = await SemigrateProcess.RunAsync(new Dictionary<string, string>(), "bench", "introspect", "--guest", fixture.Guest.Directory, "--runs", "1", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        using var json = JsonDocument.Parse(r.Stdout);
        var guest = Assert.Single(json.RootElement.GetProperty("introspection").EnumerateArray().ToList());
        Assert.Equal(65600UL, guest.GetProperty("guestPages").GetUInt64());
        Assert.True(guest.GetProperty("gBpsPerCore").GetDouble() > 0);
        Assert.Equal(0, guest.GetProperty("diagnostics").GetInt32());
    }
}
